"""Grid bookkeeping: reorientation to RAS and the extent-preserving target grid.

Geometry conventions (methods.md, "Data conventions"):

- An input file's array is first reoriented to RAS by axis permutations and flips only
  (``nibabel.orientations.io_orientation``): no interpolation, so this step is exactly invertible.
- The RAS array of shape ``S`` and spacing ``s`` (mm) is resampled to ``n = round(S * s / t)``
  voxels for a target spacing ``t``. The new grid covers the *same physical extent* as the old one
  (voxel edges aligned, like ``scipy.ndimage.zoom(grid_mode=True)`` and nnU-Net), so its actual
  spacing is ``S * s / n``, which differs from ``t`` by the rounding of ``n`` (at most ``t / (2n)``
  relative). New voxel ``j`` sits at old continuous index ``(j + 0.5) * S / n - 0.5``; the
  preprocessed affine is built from exactly that mapping, so world coordinates are preserved.
- An axis whose voxel count does not change is copied, not interpolated: at unchanged spacing the
  whole pipeline is a pure permutation/flip and ``restore_to_original`` inverts it bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from partialseg.errors import InputError, PartialsegError
from partialseg.io import header_affine
from partialseg.preprocessing.config import Shape, Spacing

if TYPE_CHECKING:
    from partialseg.data.dataset import PartialDataset


def _affine_array(a: Any) -> np.ndarray:
    arr = np.array(a, dtype=np.float64)
    if arr.shape != (4, 4):
        raise PartialsegError(f"an affine must be 4×4, got shape {arr.shape}")
    arr.setflags(write=False)
    return arr


def _spacing_of(affine: np.ndarray) -> Spacing:
    return tuple(float(s) for s in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class GridMeta:
    """Everything needed to map a preprocessed array back onto the original file's grid.

    ``ornt``: nibabel orientation (3×2: RAS axis, flip) of the original axes, from
    ``io_orientation(original_affine)``. ``ras_*``: the reoriented grid before resampling.
    ``target_spacing``: requested spacing (mm); the grid's actual spacing is ``spacing``
    (extent-preserving, see the module docstring). ``shape``/``affine``: the preprocessed grid.
    """

    original_shape: Shape
    original_affine: np.ndarray
    ornt: np.ndarray
    ras_shape: Shape
    ras_affine: np.ndarray
    target_spacing: Spacing
    shape: Shape
    affine: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "original_shape", tuple(int(s) for s in self.original_shape))
        object.__setattr__(self, "ras_shape", tuple(int(s) for s in self.ras_shape))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "target_spacing", tuple(float(s) for s in self.target_spacing))
        for name in ("original_affine", "ras_affine", "affine"):
            object.__setattr__(self, name, _affine_array(getattr(self, name)))
        ornt = np.array(self.ornt, dtype=np.float64)
        if ornt.shape != (3, 2):
            raise PartialsegError(f"ornt must be 3×2, got shape {ornt.shape}")
        ornt.setflags(write=False)
        object.__setattr__(self, "ornt", ornt)

    @property
    def spacing(self) -> Spacing:
        """Actual voxel size of the preprocessed grid (mm)."""
        return _spacing_of(self.affine)

    @property
    def original_spacing(self) -> Spacing:
        return _spacing_of(self.original_affine)

    @property
    def ras_spacing(self) -> Spacing:
        return _spacing_of(self.ras_affine)

    def to_dict(self) -> dict[str, Any]:
        return {
            "original_shape": list(self.original_shape),
            "original_affine": self.original_affine.tolist(),
            "ornt": self.ornt.astype(int).tolist(),
            "ras_shape": list(self.ras_shape),
            "ras_affine": self.ras_affine.tolist(),
            "target_spacing": list(self.target_spacing),
            "shape": list(self.shape),
            "affine": self.affine.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GridMeta:
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__})
        except KeyError as e:
            raise PartialsegError(f"grid metadata lacks the key {e.args[0]!r}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GridMeta) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.original_shape, self.shape, self.target_spacing))


def ras_orientation(affine: np.ndarray, shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    """The orientation taking an array with ``affine`` to RAS, and the RAS array's affine."""
    from nibabel.orientations import inv_ornt_aff, io_orientation

    ornt = io_orientation(affine)
    return ornt, np.asarray(affine, dtype=np.float64) @ inv_ornt_aff(ornt, shape)


def ras_spacing(affine: np.ndarray) -> Spacing:
    """Voxel size (mm) along the RAS axes of the reoriented array (a permutation of the file's)."""
    from nibabel.orientations import io_orientation

    ornt = io_orientation(affine)
    sp = _spacing_of(affine)
    out = [0.0, 0.0, 0.0]
    for i in range(3):
        out[int(ornt[i, 0])] = sp[i]
    return tuple(out)  # type: ignore[return-value]


def to_ras(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Reorient the first three axes (a view: permutation and flips only)."""
    from nibabel.orientations import apply_orientation

    return apply_orientation(array, ornt)


def from_ras(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform

    return apply_orientation(array, ornt_transform(axcodes2ornt("RAS"), ornt))


def grid_for(affine: np.ndarray, shape: Shape, target_spacing: Spacing | None) -> GridMeta:
    """The preprocessing grid of an image with ``affine``/``shape`` at ``target_spacing`` (mm).

    ``None`` keeps the image's own (reoriented) spacing.
    """
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    ornt, ras_aff = ras_orientation(affine, shape)
    ras_shape = tuple(int(shape[int(np.flatnonzero(ornt[:, 0] == a)[0])]) for a in range(3))
    ras_sp = np.array(_spacing_of(ras_aff))
    target = ras_sp if target_spacing is None else np.asarray(target_spacing, dtype=np.float64)
    # floor(x + 0.5): rounds halves up (Python's round() would round them to even)
    new_shape = tuple(max(1, int(np.floor(S * s / t + 0.5))) for S, s, t in zip(ras_shape, ras_sp, target))
    # new voxel j ↔ old continuous index (j + 0.5) * S / n - 0.5: edge-aligned, extent-preserving
    step = np.array([S / n for S, n in zip(ras_shape, new_shape)])
    scale = np.eye(4)
    scale[:3, :3] = np.diag(step)
    scale[:3, 3] = 0.5 * (step - 1.0)
    return GridMeta(
        original_shape=shape,
        original_affine=np.asarray(affine, dtype=np.float64),
        ornt=ornt,
        ras_shape=ras_shape,  # type: ignore[arg-type]
        ras_affine=ras_aff,
        target_spacing=tuple(float(t) for t in target),  # type: ignore[arg-type]
        shape=new_shape,  # type: ignore[arg-type]
        affine=ras_aff @ scale,
    )



def median_spacing(dataset: PartialDataset) -> Spacing:
    """Per-axis median of the cases' spacings after reorientation to RAS (headers only)."""
    import nibabel as nib

    spacings = []
    for case in dataset.cases:
        try:
            img = nib.load(str(case.image))
        except Exception as e:  # nibabel raises many types for corrupt headers
            raise InputError(case.image, f"cannot read as NIfTI ({type(e).__name__}: {e})") from None
        affine = header_affine(img, case.image)
        spacings.append(ras_spacing(affine))
    return tuple(float(s) for s in np.median(np.array(spacings), axis=0))  # type: ignore[return-value]


#: largest resampled volume (voxels) preprocessing will allocate: 4 GiB as float32, about 16
#: times a 512×512×1000 CT at its own spacing
MAX_RESAMPLED_VOXELS = 2**30


def check_resampled_size(meta: GridMeta, path: str | Path | None, limit: int = MAX_RESAMPLED_VOXELS) -> None:
    """Raise ``InputError`` naming ``path`` before allocating a resampled grid over ``limit`` voxels."""
    n = int(np.prod(np.array(meta.shape, dtype=np.int64)))
    if n <= limit:
        return
    spacing = ", ".join(f"{s:g}" for s in meta.ras_spacing)
    target = ", ".join(f"{t:g}" for t in meta.target_spacing)
    raise InputError(
        path,
        f"resampling {list(meta.ras_shape)} voxels of ({spacing}) mm to ({target}) mm would make "
        f"{list(meta.shape)} = {n / 1e9:.2f} G voxels ({n * 4 / 2**30:.0f} GiB as float32), over the limit of "
        f"{limit / 1e9:.2f} G: check the voxel size in the header (pixdim in µm instead of mm?) or the target spacing",
    )
