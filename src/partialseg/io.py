"""NIfTI reading with errors that name the file, and atomic writing.

Every writer goes through a temporary sibling and ``os.replace`` so a killed process never
leaves a half-written file under the final name, and refuses to replace an existing file
unless told to (partialseg never overwrites what the user gave).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.errors import InputError, OutputExistsError

AFFINE_ATOL = 1e-3  # mm; header round-off between image and label files written by different tools


@dataclass(frozen=True)
class Volume:
    """A 3D array with its voxel-to-world (RAS+, mm) affine, as stored in the file."""

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        import nibabel as nib

        return "".join(nib.aff2axcodes(self.affine))


def load_volume(path: str | Path, *, dtype: Any = None, check_finite: bool = True) -> Volume:
    """Read a 3D NIfTI (a trailing singleton 4th axis is dropped).

    Raises ``InputError`` naming ``path`` when it is missing, unreadable, not 3D, or holds NaN/inf.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise InputError(path, "file does not exist")
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises many types for corrupt files
        raise InputError(path, f"cannot read as NIfTI ({type(e).__name__}: {e})") from None
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise InputError(path, f"expected a 3D volume, got shape {arr.shape}")
    if check_finite and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        n = int((~np.isfinite(arr)).sum())
        raise InputError(path, f"contains {n} NaN or infinite voxels")
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(path, "has a singular or non-finite affine")
    return Volume(arr, affine, path)


def check_same_grid(a: Volume, b: Volume) -> None:
    """Raise ``InputError`` naming ``b.path`` if ``b`` is not on ``a``'s voxel grid."""
    if a.array.shape != b.array.shape:
        raise InputError(b.path, f"shape {b.array.shape} does not match the image {a.path} shape {a.array.shape}")
    if not np.allclose(a.affine, b.affine, atol=AFFINE_ATOL):
        raise InputError(
            b.path,
            f"affine does not match the image {a.path}:\n{np.array2string(b.affine, precision=4)}\nvs\n"
            f"{np.array2string(a.affine, precision=4)}",
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes 0600 files; outputs should get the usual permissions, as open() would give
    os.chmod(tmp, 0o666 & ~_umask())
    return Path(tmp)


def _refuse(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputExistsError(path)


def save_volume(array: np.ndarray, affine: np.ndarray, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``array`` as NIfTI (``.nii.gz``) atomically. Integer label maps are stored as uint8/int16."""
    import nibabel as nib

    path = Path(path)
    _refuse(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    tmp = _tmp_sibling(path)
    try:
        # nibabel picks compression from the suffix, so give it one it recognises
        tmp_gz = tmp.with_name(tmp.name + ("".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix))
        nib.save(img, str(tmp_gz))
        os.replace(tmp_gz, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(text: str, path: str | Path, *, overwrite: bool = True) -> Path:
    path = Path(path)
    _refuse(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(obj: Any, path: str | Path, *, overwrite: bool = True) -> Path:
    return write_text_atomic(json.dumps(obj, indent=2, sort_keys=False) + "\n", path, overwrite=overwrite)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file does not exist")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(path, f"cannot read as JSON ({e})") from None


@contextlib.contextmanager
def atomic_output_dir(path: str | Path) -> Iterator[Path]:
    """Build a new output folder under a temporary name; rename it into place on success.

    Refuses an existing ``path``. On an exception the partial folder is removed, so a
    failed or killed command leaves either nothing or a complete folder.
    """
    path = Path(path)
    if path.exists():
        raise OutputExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_figure(fig: Any, path: str | Path, *, dpi: int = 90) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return path
