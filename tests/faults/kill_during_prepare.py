"""Run ``prepare`` or ``train`` and SIGKILL the process in the middle of preparing the 2nd case.

``python kill_during_prepare.py prepare DATASET OUT`` / ``... train DATASET RUN [--set overrides]``.
"""

import os
import signal
import sys

import partialseg.preprocessing.cache as pp

_orig = pp.preprocess_label
_calls = [0]


def _killer(*args, **kwargs):
    _calls[0] += 1
    if _calls[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return _orig(*args, **kwargs)


pp.preprocess_label = _killer
mode, data, out, *overrides = sys.argv[1:]
if mode == "prepare":
    pp.prepare_dataset(data, out, pp.PreprocessConfig(spacing=(2.0, 2.5, 3.0)), progress=False)
else:
    from partialseg.api import fit
    from partialseg.config import load_config

    fit(data, out, load_config(None, overrides), progress=False)
