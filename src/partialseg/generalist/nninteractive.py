"""Adapter over the real nnInteractive inference session (MIC-DKFZ; optional extra).

Install (keeps the CPU torch; see ``requirements-nninteractive.txt``)::

    pip install -c constraints.txt "partialseg[nninteractive]"

Weights are never bundled or downloaded by partialseg: the user points ``model_folder`` at a
copy of the nnInteractive checkpoint (Hugging Face ``MIC-DKFZ/nnInteractive``, licence
CC BY-NC-SA 4.0, about 400 MB), the folder that holds ``plans.json``, ``dataset.json``,
``inference_info.json`` (older releases: ``inference_session_class.json``) and
``fold_<k>/checkpoint_final.pth``.

What the adapter does per image (``segment_many``; ``segment`` is the one-object case):

- ``set_image(image[None])`` with the raw intensities (nnInteractive normalises itself) and a
  ``uint8`` target buffer the session writes the binary mask into;
- per object: ``reset_interactions()`` (from the second object on), then each 2D box with
  ``add_bbox_interaction(bbox, include_interaction=True, run_prediction=False)`` except the last,
  which predicts (the session predicts around the last interaction, with every queued box in
  its input channels);
- copies the mask out before the next object.

Axis order. partialseg arrays are RAS (X, Y, Z). nnInteractive's own tools (napari plugin,
README) hand it SimpleITK arrays, i.e. the stored voxel array in (z, y, x) order, and the
network saw that order in training. With ``axis_order="zyx"`` (default) the adapter gives the
session ``image.transpose(2, 1, 0)`` and each box ``[[lo_z, hi_z], [lo_y, hi_y], [lo_x, hi_x]]``
(half-open, the box's slice axis of size 1), and transposes the mask back. ``axis_order="xyz"``
passes the array as given.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.errors import InputError, PartialsegError
from partialseg.generalist.base import Generalist
from partialseg.generalist.prompts import BoxPrompt

__all__ = ["NNInteractiveGeneralist", "check_model_folder", "INSTALL_HINT", "WEIGHTS_HINT"]

INSTALL_HINT = (
    'nnInteractive is not installed. Install the optional extra with: pip install -c constraints.txt '
    '"partialseg[nninteractive]" (constraints.txt, from the partialseg repository, pins the CPU torch; '
    "without it pip replaces torch by a multi-GB CUDA build, because nnInteractive's dependencies pull "
    "torchvision). See requirements-nninteractive.txt."
)
WEIGHTS_HINT = (
    "partialseg does not ship or download the nnInteractive weights (licence CC BY-NC-SA 4.0, non-commercial; "
    "about 400 MB). Get them from Hugging Face, repository MIC-DKFZ/nnInteractive, e.g. with nnInteractive's "
    "own tool 'nninteractive-download-model nnInteractive_v1.0' (stores them under "
    "~/.nninteractive/models/nnInteractive_v1.0) or 'hf download MIC-DKFZ/nnInteractive --local-dir DIR', and "
    "pass the folder that holds plans.json, dataset.json, inference_info.json and fold_0/checkpoint_final.pth."
)
CAPABILITY_FILES = ("inference_info.json", "inference_session_class.json")  # current, legacy
AXIS_ORDERS = ("zyx", "xyz")


def check_model_folder(
    folder: str | Path, fold: int | str | None = None, checkpoint: str = "checkpoint_final.pth"
) -> tuple[Path, str]:
    """Validate an nnInteractive model folder; returns it and the fold folder name to load.

    Raises ``InputError`` naming the folder, what is missing, and how to get the weights.
    Needs neither nnInteractive nor torch.
    """
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise InputError(folder, f"nnInteractive model folder does not exist. {WEIGHTS_HINT}")
    if not folder.is_dir():
        raise InputError(folder, f"is not a folder; the nnInteractive model is a folder. {WEIGHTS_HINT}")
    missing = [n for n in ("plans.json", "dataset.json") if not (folder / n).is_file()]
    if not any((folder / n).is_file() for n in CAPABILITY_FILES):
        missing.append(" or ".join(CAPABILITY_FILES))
    if fold is not None:
        name = "fold_all" if str(fold) == "all" else f"fold_{int(fold)}"
        if not (folder / name / checkpoint).is_file():
            missing.append(f"{name}/{checkpoint}")
    else:
        folds = sorted(p.name for p in folder.glob("fold_*") if (p / checkpoint).is_file())
        if not folds:
            missing.append(f"fold_<k>/{checkpoint}")
        elif len(folds) > 1:
            raise InputError(folder, f"holds several folds {folds}; choose one with the fold option")
        else:
            name = folds[0]
    if missing:
        hint = ""
        sub = sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / "plans.json").is_file())
        if sub:
            hint = f" (the model seems to be one level down: {', '.join(sub)})"
        raise InputError(folder, f"not an nnInteractive model folder: missing {', '.join(missing)}{hint}. {WEIGHTS_HINT}")
    return folder, name


def _session_class() -> Any:
    try:
        from nnInteractive.inference.inference_session import nnInteractiveInferenceSession
    except ImportError as e:
        raise PartialsegError(f"{INSTALL_HINT} (import failed: {e})") from None
    return nnInteractiveInferenceSession


class NNInteractiveGeneralist(Generalist):
    """The nnInteractive promptable network as an IPnP generalist (binary mask, no probabilities).

    ``model_folder``: the user's nnInteractive model (see the module docstring). ``device``:
    ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    ``do_autozoom``: nnInteractive's AutoZoom (grows the field of view when the object reaches the
    patch border; on by default as in nnInteractive). ``fold``/``checkpoint``: which checkpoint
    (default: the only ``fold_*`` with ``checkpoint_final.pth``). ``axis_order``: ``"zyx"``
    (default, nnInteractive's SimpleITK convention) or ``"xyz"``. ``torch_threads``: CPU threads
    for the session (default: torch's current setting; nnInteractive sets it process-wide).
    ``verbose``: let the session print (it prints a lot; silenced by default).
    The model is loaded on first use; ``session`` gives the underlying session.
    """

    name = "nninteractive"

    def __init__(
        self,
        model_folder: str | Path,
        *,
        device: str = "auto",
        do_autozoom: bool = True,
        fold: int | str | None = None,
        checkpoint: str = "checkpoint_final.pth",
        axis_order: str = "zyx",
        torch_threads: int | None = None,
        verbose: bool = False,
    ) -> None:
        if axis_order not in AXIS_ORDERS:
            raise PartialsegError(f"axis_order must be one of {AXIS_ORDERS}, got {axis_order!r}")
        self.model_folder, self._fold_name = check_model_folder(model_folder, fold, checkpoint)
        self._session_cls = _session_class()  # fail now, not at the first image, when not installed
        self.device = device
        self.do_autozoom = bool(do_autozoom)
        self.checkpoint = checkpoint
        self.axis_order = axis_order
        self.torch_threads = torch_threads
        self.verbose = bool(verbose)
        self._session: Any = None

    # ---- session --------------------------------------------------------------------------
    def _quiet(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.verbose else contextlib.redirect_stdout(io.StringIO())

    def _torch_device(self) -> Any:
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(self.device)
        except RuntimeError as e:
            raise PartialsegError(f"nninteractive: bad device {self.device!r} ({e})") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise PartialsegError(f"nninteractive: device {self.device!r} asked for, but torch sees no CUDA GPU")
        return dev

    @property
    def session(self) -> Any:
        """The nnInteractive inference session, created and loaded on first access."""
        if self._session is None:
            import torch

            from partialseg import checkpoint as ckpt

            threads = self.torch_threads or torch.get_num_threads()
            with self._quiet():
                sess = self._session_cls(
                    device=self._torch_device(),
                    use_torch_compile=False,
                    verbose=self.verbose,
                    torch_n_threads=threads,
                    do_autozoom=self.do_autozoom,
                )
                weights = self.model_folder / self._fold_name / self.checkpoint
                try:
                    # nnInteractive unpickles the checkpoint unrestricted, which could run code
                    with ckpt.plain_data_loads(weights):
                        sess.initialize_from_trained_model_folder(
                            str(self.model_folder), use_fold=self._fold_name[len("fold_"):], checkpoint_name=self.checkpoint
                        )
                except InputError:
                    raise
                except Exception as e:  # nnInteractive raises many kinds on a broken folder
                    raise InputError(
                        self.model_folder, f"nnInteractive could not load this model ({type(e).__name__}: {e})"
                    ) from e
            self._session = sess
        return self._session

    # ---- axis order -----------------------------------------------------------------------
    def to_session_array(self, image: np.ndarray) -> np.ndarray:
        """Our (X, Y, Z) array in the session's axis order (a contiguous copy for ``"zyx"``)."""
        return np.ascontiguousarray(image.transpose(2, 1, 0)) if self.axis_order == "zyx" else image

    def from_session_array(self, array: np.ndarray) -> np.ndarray:
        return array.transpose(2, 1, 0) if self.axis_order == "zyx" else array

    def to_session_box(self, prompt: BoxPrompt) -> list[list[int]]:
        """Half-open ``[[lo, hi], ...]`` per session axis (size 1 along the box's slice axis)."""
        pairs = [[int(lo), int(hi)] for lo, hi in zip(prompt.lo, prompt.hi)]
        return pairs[::-1] if self.axis_order == "zyx" else pairs

    # ---- Generalist -----------------------------------------------------------------------
    def segment(self, image: np.ndarray, spacing: Sequence[float], prompts: Sequence[BoxPrompt]) -> np.ndarray:
        return self.segment_many(image, spacing, {1: prompts})[1]

    def segment_many(
        self, image: np.ndarray, spacing: Sequence[float], prompts_per_object: Mapping[int, Sequence[BoxPrompt]]
    ) -> dict[int, np.ndarray]:
        """Set the image once, then one prediction per object with ``reset_interactions()`` between them."""
        arr = self._check(image, spacing, [p for ps in prompts_per_object.values() for p in ps])
        out = {int(k): np.zeros(arr.shape, bool) for k in prompts_per_object}
        todo = [(int(k), list(ps)) for k, ps in prompts_per_object.items() if ps]
        if not todo:
            return out
        sess = self.session
        img = self.to_session_array(arr)
        buffer = np.zeros(img.shape, np.uint8)
        with self._quiet():
            sess.set_image(img[None])
            sess.set_target_buffer(buffer)
            for n, (k, prompts) in enumerate(todo):
                if n:
                    sess.reset_interactions()  # also zeroes the target buffer
                for i, p in enumerate(prompts):
                    sess.add_bbox_interaction(
                        self.to_session_box(p), include_interaction=True, run_prediction=i == len(prompts) - 1
                    )
                out[k] = np.ascontiguousarray(self.from_session_array(buffer > 0))
        return out

    def __repr__(self) -> str:
        return (
            f"NNInteractiveGeneralist(model_folder={str(self.model_folder)!r}, device={self.device!r}, "
            f"do_autozoom={self.do_autozoom}, axis_order={self.axis_order!r})"
        )
