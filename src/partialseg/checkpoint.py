"""Atomic checkpoints and the saved inference model, as tensors and plain data only.

Files are read with ``torch.load(weights_only=True)``: a ``model.pt`` or ``last.pt`` is
just tensors, dicts, lists, strings and numbers, so loading a file someone handed you cannot
run code. ``save_atomic`` refuses anything else (a ``Path``, a dataclass, a numpy scalar)
up front, naming the field, rather than writing a file ``load`` would then refuse.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from partialseg.errors import InputError, PartialsegError

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoints/last.pt"

_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.Size, torch.dtype, torch.device)


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise ``PartialsegError`` naming the first value that ``weights_only`` loading would refuse."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise PartialsegError(f"{where}: key {k!r} is a {type(k).__name__}; checkpoints hold plain data only")
            check_plain(v, f"{where}.{k}")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise PartialsegError(f"{where} is a {type(obj).__module__}.{type(obj).__name__}; checkpoints hold only "
                          "tensors, dicts, lists, strings and numbers (convert it first)")


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary sibling, then ``os.replace``: a kill leaves the old file intact.

    The file gets the umask's permissions like every other output (not mkstemp's 0600).
    """
    from partialseg.io import _writing, tmp_sibling

    check_plain(obj)
    path = Path(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_sibling(path)
        try:
            torch.save(obj, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def _numpy_scalar_globals() -> list[Any]:
    """What unpickling a numpy number (``np.float64(0.5)``) needs: numpy's scalar constructor and the numeric
    dtypes. They rebuild a number from its bytes and run nothing else; object, void and string dtypes (which
    could carry other objects) are left out."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    kinds = ("Bool", "Int", "UInt", "Byte", "UByte", "Short", "UShort", "Long", "ULong", "LongLong", "ULongLong",
             "Float", "Double", "LongDouble", "Complex", "CLongDouble", "Half")
    dtypes = [getattr(np.dtypes, n) for n in dir(getattr(np, "dtypes", object)) if n.endswith("DType")
              and n[:-5].rstrip("0123456789") in kinds]
    return [scalar, np.dtype, *dtypes]


@contextmanager
def _numpy_numbers_allowed() -> Iterator[None]:
    """``weights_only`` loading accepts numpy numbers inside. Only the globals not yet allowed are added and then
    removed: torch's allow-list is one set, not a stack, so a nested ``safe_globals`` of the same entries (a
    ``load`` inside :func:`plain_data_loads`) would otherwise remove them for the outer block too."""
    allowed = torch.serialization.get_safe_globals()
    with torch.serialization.safe_globals([g for g in _numpy_scalar_globals() if g not in allowed]):
        yield


def _refused(path: Path, e: pickle.UnpicklingError) -> InputError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return InputError(path, "refused: the file holds objects other than tensors and plain data, which could run "
                            f"code when loaded; partialseg only loads files it wrote ({first})")


_FORCE_SAFE, _FORCE_UNSAFE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextmanager
def plain_data_loads(path: str | Path) -> Iterator[None]:
    """Every ``torch.load`` inside reads plain data only (``weights_only``, numpy numbers allowed), whatever
    ``weights_only`` its caller passes: for library code that reads a file we hand it with
    ``weights_only`` off (nnU-Net v2's ``load_checkpoint`` and pretrained weights), which could run code.
    A refused file is an ``InputError`` naming ``path``. torch (>= 2.4) reads ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``
    on every call, so the file is read once, by the library, and safely."""
    saved = {k: os.environ.pop(k, None) for k in (_FORCE_SAFE, _FORCE_UNSAFE)}
    os.environ[_FORCE_SAFE] = "1"
    try:
        with _numpy_numbers_allowed():
            yield
    except pickle.UnpicklingError as e:
        raise _refused(Path(path), e) from None
    finally:
        os.environ.pop(_FORCE_SAFE, None)
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def load(path: str | Path, map_location: str | torch.device = "cpu", *, numpy_scalars: bool = False) -> dict[str, Any]:
    """Read a checkpoint or model file with ``weights_only=True``; anything else is an ``InputError``.

    ``numpy_scalars``: also accept numpy numbers (nnU-Net v2's checkpoints keep them in their logs and
    ``_best_ema``; nnU-Net itself unpickles its files unrestricted, which could run code)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "checkpoint does not exist")
    try:
        if numpy_scalars:
            with _numpy_numbers_allowed():
                obj = torch.load(path, map_location=map_location, weights_only=True)
        else:
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refused(path, e) from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
        raise InputError(path, f"cannot read checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise InputError(path, f"not a partialseg checkpoint (holds a {type(obj).__name__}, not a mapping)")
    return obj
