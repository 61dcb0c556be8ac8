"""NIfTI reading with errors that name the file, and atomic writing.

Every writer goes through a temporary sibling and ``os.replace`` so a killed process never
leaves a half-written file under the final name, and refuses to replace an existing file
unless told to (partialseg never overwrites what the user gave). Temporary names carry the
writer's PID, so the leftovers of a killed process are recognised and removed by the next
writer of the same output; a failed write names the output the user gave, not the temporary.
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

from partialseg.errors import InputError, OutputExistsError, OutputWriteError
from partialseg.locking import pid_alive

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
    return Volume(arr, header_affine(img, path), path)


def nifti_inputs(path: str | Path) -> list[Path]:
    """The images to predict: ``path`` itself (one file), or every ``*.nii.gz`` / ``*.nii`` in the folder, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(path, "input folder does not exist")
    files = sorted(p for p in path.iterdir() if p.name.endswith((".nii.gz", ".nii")))
    if not files:
        raise InputError(path, "no .nii.gz or .nii images found")
    return files


def header_affine(img: Any, path: str | Path) -> np.ndarray:
    """The voxel-to-world affine of a loaded NIfTI, refusing headers that do not define one.

    With neither a qform nor an sform, nibabel falls back to an Analyze-style affine (LAS, and
    1 mm wherever pixdim is 0) that says nothing about the scan: trained on or predicted with, it
    silently mirrors and rescales organs. That, and a singular or non-finite affine, is an
    ``InputError`` naming ``path``.
    """
    header = img.header
    codes = [int(header.get(k, 0)) for k in ("qform_code", "sform_code")] if "qform_code" in header else None
    if codes is not None and codes == [0, 0]:
        zooms = _raw_pixdim(path, header)
        detail = f" and pixdim {zooms} has zeros" if any(z <= 0 for z in zooms) else ""
        raise InputError(path, f"header has no qform or sform (both codes 0){detail}: the voxel size and orientation "
                               "are unknown; set them (e.g. nibabel set_qform/set_sform) before using the file")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(path, "has a singular or non-finite affine (a zero voxel size?)")
    return affine


def _raw_pixdim(path: str | Path, header: Any) -> list[float]:
    """pixdim[1:4] as stored: nibabel's loader replaces zeros by 1 in the header it returns."""
    import nibabel as nib

    try:
        with nib.openers.ImageOpener(str(path)) as f:
            raw = type(header).from_fileobj(f, check=False)
        return [float(z) for z in raw["pixdim"][1:4]]
    except Exception:  # noqa: BLE001 - only for the message
        return [float(z) for z in header["pixdim"][1:4]]


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


def _remove_dead_leftovers(path: Path) -> None:
    """Remove ``.<name>.<pid>.*.tmp*`` / ``*.partial`` siblings of ``path`` whose writer no longer runs."""
    prefix = f".{path.name}."
    try:
        entries = [e for e in path.parent.iterdir() if e.name.startswith(prefix)]
    except OSError:
        return
    for e in entries:
        pid, _, rest = e.name[len(prefix):].partition(".")
        if not pid.isdigit() or not (rest.endswith(".partial") or ".tmp" in rest) or pid_alive(int(pid)):
            continue
        if e.is_dir() and not e.is_symlink():
            shutil.rmtree(e, ignore_errors=True)
        else:
            e.unlink(missing_ok=True)


@contextlib.contextmanager
def _writing(path: Path, tmp: Path | None = None) -> Iterator[None]:
    """Report an ``OSError`` while producing ``path`` as an ``OutputWriteError`` naming ``path``.

    An error about a file under the temporary ``tmp`` is reported under the same relative name
    below ``path``; errors about other files (e.g. an input read in the block) pass unchanged.
    """
    try:
        yield
    except OutputWriteError as e:
        if tmp is not None and _is_under(e.path, tmp):
            raise OutputWriteError(path / e.path.relative_to(tmp), e.reason) from None
        raise
    except OSError as e:
        if isinstance(e, OutputExistsError):
            raise
        name = None if e.filename is None else Path(e.filename)
        if tmp is not None and name is not None and _is_under(name, tmp):
            raise OutputWriteError(path / name.relative_to(tmp), e.strerror or str(e)) from None
        if tmp is None or name is None:
            raise OutputWriteError(path, e.strerror or str(e)) from None
        raise


def _is_under(p: Path, folder: Path) -> bool:
    try:
        p.relative_to(folder)
        return True
    except ValueError:
        return False


def tmp_sibling(path: Path) -> Path:
    """A new empty ``.<name>.<pid>.<random>.tmp`` beside ``path`` with the umask's permissions."""
    _remove_dead_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes 0600 files; outputs should get the usual permissions, as open() would give
    os.chmod(tmp, 0o666 & ~_umask())
    return Path(tmp)


def check_can_write(path: str | Path, *, overwrite: bool = False, inputs: tuple[str | Path, ...] = (),
                    hint: str | None = None) -> None:
    """Refuse to write ``path`` over something that exists (unless ``overwrite``) or over an input.

    ``inputs``: files and folders the command reads. An existing file that is one of them, or
    lies inside one of them, is refused even with ``overwrite`` (an output never replaces what
    it was computed from). Call it for every output before writing the first one, so a refusal
    leaves nothing half-written.
    """
    path = Path(path)
    if not path.exists():
        return
    real = path.resolve()
    for inp in inputs:
        inp = Path(inp).resolve()
        if real == inp or (inp.is_dir() and _is_under(real, inp)):
            raise InputError(path, f"is an input of this command ({inp}); partialseg never writes over its inputs, "
                                   "choose another output path")
    if not overwrite:
        raise OutputExistsError(path, hint) if hint else OutputExistsError(path)


def _refuse(path: Path, overwrite: bool) -> None:
    check_can_write(path, overwrite=overwrite)


def save_volume(array: np.ndarray, affine: np.ndarray, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``array`` as NIfTI (``.nii.gz``) atomically. Integer label maps are stored as uint8/int16."""
    import nibabel as nib

    path = Path(path)
    _refuse(path, overwrite)
    arr = np.asarray(array)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_sibling(path)
        # nibabel picks compression from the suffix, so give it one it recognises
        tmp_gz = tmp.with_name(tmp.name + ("".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix))
        try:
            nib.save(img, str(tmp_gz))
            os.replace(tmp_gz, path)
        finally:
            tmp.unlink(missing_ok=True)
            tmp_gz.unlink(missing_ok=True)
    return path


def write_text_atomic(text: str, path: str | Path, *, overwrite: bool = True) -> Path:
    path = Path(path)
    _refuse(path, overwrite)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_sibling(path)
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
    failed command leaves either nothing or a complete folder; the partial folder of a killed
    one (``.<name>.<pid>.*.partial``) is removed by the next command writing ``path``.
    An ``OSError`` writing into the folder is reported under ``path``, not the hidden name.
    """
    path = Path(path)
    if path.exists():
        raise OutputExistsError(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_leftovers(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".partial", dir=path.parent))
    try:
        with _writing(path, tmp):
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
            yield tmp
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_figure(fig: Any, path: str | Path, *, dpi: int = 90) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with _writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = tmp_sibling(path)
            try:
                fig.savefig(tmp, dpi=dpi, format="png")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
    finally:
        plt.close(fig)
    return path
