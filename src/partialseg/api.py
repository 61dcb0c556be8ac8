"""partialseg's Python API for training, the layer the CLI and the experiments call.

:func:`fit` trains any registered method: one ``training.train`` run, or the method's multi-stage
procedure (:data:`PROCEDURES`; a method names its own in ``Method.procedure``). The dispatch lives
here, above ``pseudolabel`` and ``training``, so that methods stay plain compositions that import
neither.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from partialseg.config import ExperimentConfig
from partialseg.errors import InputError


def _ipnp(dataset: str | Path, out: str | Path, cfg: ExperimentConfig, options: Any, *, resume: bool, progress: bool) -> Path:
    from partialseg.pseudolabel.loop import run_ipnp

    return run_ipnp(dataset, out, cfg, options, resume=resume, progress=progress)


def _pfl(dataset: str | Path, out: str | Path, cfg: ExperimentConfig, options: Any, *, resume: bool, progress: bool) -> Path:
    from partialseg.pseudolabel.pfl import run_pfl

    return run_pfl(dataset, out, cfg, options, resume=resume, progress=progress)


#: ``Method.procedure`` → the function that runs it, ``(dataset, out, config, options, *, resume, progress)``
PROCEDURES: dict[str, Callable[..., Path]] = {"ipnp": _ipnp, "pfl": _pfl}


def fit(dataset: str | Path, out: str | Path, config: ExperimentConfig | None = None, *, resume: bool = False,
        progress: bool = True) -> Path:
    """Train ``config``'s method on ``dataset`` into the run folder ``out`` (``config=None``: resume the
    run saved there); returns the model file."""
    from partialseg.config import load_config
    from partialseg.methods import get_method
    from partialseg.training.trainer import _dist_info, run_guard, train

    if config is not None:
        config.validate()
    elif not (Path(out) / "config.yaml").exists():
        raise InputError(out, "nothing to resume: no config.yaml in this run folder")
    cfg = config if config is not None else load_config(Path(out) / "config.yaml")
    cls = get_method(cfg.method.name)
    if cls.procedure is None:
        return train(dataset, out, config, resume=resume, progress=progress)
    _, rank, _ = _dist_info()
    with run_guard(Path(out), resume, rank):
        return PROCEDURES[cls.procedure](dataset, out, cfg, cls.options_cls(**cfg.method.options), resume=resume,
                                         progress=progress)


__all__ = ["PROCEDURES", "fit"]
