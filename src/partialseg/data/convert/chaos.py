"""CHAOS, the Combined Healthy Abdominal Organ Segmentation challenge (ISBI 2019; Kavur et al. 2021,
Medical Image Analysis 69:101950): ``Train_Sets`` as downloaded, DICOM series with one PNG mask per slice.

- ``CT/<patient>/DICOM_anon/*.dcm`` and ``CT/<patient>/Ground/*.png``: liver only (mask 255; any nonzero is liver).
- ``MR/<patient>/T2SPIR/DICOM_anon/*.dcm`` + ``T2SPIR/Ground/*.png``, and ``MR/<patient>/T1DUAL/DICOM_anon/InPhase``,
  ``.../OutPhase`` + ``T1DUAL/Ground`` (one mask set for both phases): liver 63 (55-70), right kidney 126
  (110-135), left kidney 189 (175-200), spleen 252 (240-255), as the challenge's own conversion code reads them.

``modality`` picks the part ("CT" or "MR": ``channel_names`` {"0": "MR"}); for MR ``sequence`` picks the series:
"T2SPIR" (default), "T1DUAL_in" or "T1DUAL_out". Case ids ``chaos_ct_01``, ``chaos_t2spir_01``, ``chaos_t1in_01``,
``chaos_t1out_01``; case groups ``chaos_ct`` / ``chaos_mr``; CT cases annotate {liver}, MR cases the four organs.

Mask order. The k-th PNG (natural name order) belongs to the k-th DICOM file (natural name order), never to
the k-th slice by position: CHAOS's evaluation code (github.com/emrekavur/CHAOS-evaluation, CHAOSmetrics.py)
stacks both by sorted file name and states that "the orientation of the slices is determined by order of
image names NOT by position tags". In the CT sets the name order runs against the slice positions, which is
why converters that sort the DICOMs by position (GDCM/SimpleITK series readers) find the CT masks "flipped"
and reverse them by hand; pairing by name first needs no per-modality flip and holds for any order. The
pairs are then stacked by ImagePositionPatient along the slice normal (InstanceNumber when no slice has a
position). In plane a PNG's rows and columns are the DICOM pixel array's, unflipped.

Geometry: the affine comes from ImageOrientationPatient, PixelSpacing and the sorted positions (slice step
from first to last), DICOM LPS turned into NIfTI RAS; voxel (i, j, k) is column i, row j, slice k. Pixel values
pass through RescaleSlope/RescaleIntercept (Hounsfield units for CT).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.errors import InputError, warn

#: MR mask value ranges (inclusive) -> registry class; 0 is background, anything else an error
MR_RANGES: tuple[tuple[int, int, str], ...] = (
    (55, 70, "liver"), (110, 135, "kidney_right"), (175, 200, "kidney_left"), (240, 255, "spleen"),
)
#: MR sequence option -> (DICOM folder, mask folder) under the patient, and the case id tag
SEQUENCES: dict[str, tuple[str, str, str]] = {
    "T2SPIR": ("T2SPIR/DICOM_anon", "T2SPIR/Ground", "t2spir"),
    "T1DUAL_in": ("T1DUAL/DICOM_anon/InPhase", "T1DUAL/Ground", "t1in"),
    "T1DUAL_out": ("T1DUAL/DICOM_anon/OutPhase", "T1DUAL/Ground", "t1out"),
}


def _natural(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _floats(path: Path, ds: Any, tag: str, n: int, required: bool = True) -> np.ndarray | None:
    value = getattr(ds, tag, None)
    if value is None or value == "":
        if required:
            raise InputError(path, f"no {tag}; a CHAOS slice needs it to place the slice")
        return None
    try:
        out = np.array([float(v) for v in (value if n > 1 else [value])], np.float64)
    except (TypeError, ValueError):
        raise InputError(path, f"{tag} {value!r} is not {n} number(s)") from None
    if out.shape != (n,):
        raise InputError(path, f"{tag} {list(out)} should hold {n} values")
    return out


def _read_slices(folder: Path) -> tuple[list[Path], list[np.ndarray], list[Any]]:
    """The folder's DICOM files in natural name order, their rescaled pixels (rows x cols) and headers."""
    import pydicom

    files = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".dcm"), key=_natural) if folder.is_dir() else []
    if not files:
        raise InputError(folder, "no DICOM slices (*.dcm)" if folder.is_dir() else "folder does not exist")
    pixels, headers = [], []
    for p in files:
        try:
            ds = pydicom.dcmread(p)
            arr = np.asarray(ds.pixel_array)
        except Exception as e:  # noqa: BLE001 - pydicom raises many types for corrupt or unsupported files
            raise InputError(p, f"cannot read as a DICOM image ({type(e).__name__}: {e})") from None
        if arr.shape != (int(ds.Rows), int(ds.Columns)):
            raise InputError(p, f"pixel data of shape {arr.shape}, expected one {int(ds.Rows)}x{int(ds.Columns)} slice")
        slope = float(getattr(ds, "RescaleSlope", None) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", None) or 0.0)
        pixels.append(arr.astype(np.float64) * slope + intercept)
        headers.append(ds)
    return files, pixels, headers


def _geometry(files: list[Path], headers: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """The slices' stacking order (indices into ``files``) and the RAS affine of the stacked volume."""
    iop = _floats(files[0], headers[0], "ImageOrientationPatient", 6)
    spacing = _floats(files[0], headers[0], "PixelSpacing", 2)
    for p, ds in zip(files[1:], headers[1:]):
        for tag, ref in (("ImageOrientationPatient", iop), ("PixelSpacing", spacing)):
            got = _floats(p, ds, tag, len(ref))
            if not np.allclose(got, ref, atol=1e-4):
                raise InputError(p, f"{tag} {list(got)} differs from {files[0].name}'s {list(ref)}: not one series")
        if (int(ds.Rows), int(ds.Columns)) != (int(headers[0].Rows), int(headers[0].Columns)):
            raise InputError(p, f"{int(ds.Rows)}x{int(ds.Columns)} pixels, {files[0].name} has "
                                f"{int(headers[0].Rows)}x{int(headers[0].Columns)}: not one series")
    row_dir, col_dir = iop[:3], iop[3:]  # along a row (column index grows), down a column (row index grows)
    normal = np.cross(row_dir, col_dir)
    positions = [_floats(p, ds, "ImagePositionPatient", 3, required=False) for p, ds in zip(files, headers)]
    thickness = float(getattr(headers[0], "SpacingBetweenSlices", None) or getattr(headers[0], "SliceThickness", None) or 1.0)
    n = len(files)
    if all(pos is None for pos in positions):
        order = np.argsort([int(getattr(ds, "InstanceNumber", 0) or 0) for ds in headers], kind="stable")
        origin, step = np.zeros(3), normal * thickness
        warn(files[0].parent, "no ImagePositionPatient: slices stacked by InstanceNumber, origin 0, "
                              f"slice spacing {thickness} mm from the header")
    else:
        missing = [p for p, pos in zip(files, positions) if pos is None]
        if missing:
            raise InputError(missing[0], "no ImagePositionPatient, while other slices of the series have one")
        pos = np.stack(positions)
        order = np.argsort(pos @ normal, kind="stable")
        pos = pos[order]
        gaps = np.diff(pos @ normal)
        if n > 1 and gaps.min() < 1e-3:
            k = int(np.argmin(gaps))
            raise InputError(files[order[k + 1]], f"same slice position as {files[order[k]].name}: duplicate slice")
        origin = pos[0]
        step = (pos[-1] - pos[0]) / (n - 1) if n > 1 else normal * thickness
        # a tenth of the spacing: catches a missing or misplaced slice, tolerates positions written rounded
        off = np.linalg.norm(pos - (origin + np.arange(n)[:, None] * step), axis=1)
        if off.max() > max(0.01, 0.1 * np.linalg.norm(step)):
            k = int(np.argmax(off))
            raise InputError(files[order[k]], f"slice position {list(pos[k])} is {off[k]:.3g} mm off the evenly spaced "
                                              f"line from {files[order[0]].name} to {files[order[-1]].name} "
                                              "(missing or misplaced slice)")
    if n > 2 and not (np.array_equal(order, np.arange(n)) or np.array_equal(order, np.arange(n)[::-1])):
        warn(files[0].parent, "file-name order does not follow the slice positions; masks were paired by file name, "
                              "as CHAOS's evaluation pairs them")
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing[1]  # PixelSpacing is (between rows, between columns)
    lps[:3, 1] = col_dir * spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return order, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _read_masks(ground: Path, dicoms: list[Path], shape: tuple[int, int]) -> list[tuple[Path, np.ndarray]]:
    from PIL import Image

    if not ground.is_dir():
        raise InputError(ground, "no Ground folder with the PNG masks (CHAOS's Test_Sets have none: convert Train_Sets)")
    pngs = sorted((p for p in ground.iterdir() if p.suffix.lower() == ".png"), key=_natural)
    if len(pngs) != len(dicoms):
        raise InputError(ground, f"{len(pngs)} PNG masks for {len(dicoms)} DICOM slices in {dicoms[0].parent}; "
                                 "CHAOS has one mask per slice")
    masks = []
    for p, dcm in zip(pngs, dicoms):
        try:
            with Image.open(p) as im:
                arr = np.asarray(im)
        except Exception as e:  # noqa: BLE001 - Pillow raises many types for corrupt files
            raise InputError(p, f"cannot read as PNG ({type(e).__name__}: {e})") from None
        if arr.ndim == 3:  # a grey mask saved as RGB(A)
            if not np.all(arr[..., :3] == arr[..., :1]):
                raise InputError(p, "colour mask: CHAOS masks are grey levels")
            arr = arr[..., 0]
        if arr.shape != shape:
            raise InputError(p, f"mask is {arr.shape[0]}x{arr.shape[1]} pixels, its DICOM slice {dcm.name} is "
                                f"{shape[0]}x{shape[1]}")
        masks.append((p, arr))
    return masks


def _labels(path: Path, mask: np.ndarray, modality: str, index: dict[str, int]) -> np.ndarray:
    if modality == "CT":
        return np.where(mask != 0, index["liver"], 0).astype(np.uint8)
    out = np.zeros(mask.shape, np.uint8)
    known = mask == 0
    for lo, hi, name in MR_RANGES:
        inside = (mask >= lo) & (mask <= hi)
        out[inside] = index[name]
        known |= inside
    if not known.all():
        bad = sorted(int(v) for v in np.unique(mask[~known]))
        ranges = ", ".join(f"{n} {lo}-{hi}" for lo, hi, n in MR_RANGES)
        raise InputError(path, f"mask value(s) {bad[:10]} are in no CHAOS MR organ range (0 background, {ranges})")
    return out


def _patients(src: Path, modality: str) -> list[Path]:
    root = src / modality if (src / "CT").is_dir() or (src / "MR").is_dir() else src
    if not root.is_dir():
        raise InputError(root, "folder does not exist" if root == src else f"no {modality} folder in this CHAOS set")
    patients = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))), key=_natural)
    if not patients:
        raise InputError(root, f"no patient folders (CHAOS's Train_Sets/{modality} holds 1/, 2/, ...)")
    return patients


def convert_chaos(src: Path, out: Path, *, modality: str = "CT", sequence: str | None = None,
                  keep_tumours: bool = False, progress: bool = True) -> Path:
    """Convert CHAOS's ``Train_Sets`` (or its CT or MR folder) ``src`` into the new dataset folder ``out``.

    ``keep_tumours`` is accepted like every converter's and changes nothing: CHAOS's organs are healthy."""
    from partialseg.data.dataset import dataset_json, write_dataset_json
    from partialseg.io import atomic_output_dir, save_volume
    from partialseg.labels import LabelSpace
    from partialseg.progress import progress as progress_bar
    from partialseg.registry import AMOS15

    src, out = Path(src), Path(out)
    if modality not in ("CT", "MR"):
        raise InputError(src, f"modality must be 'CT' or 'MR', got {modality!r}")
    if modality == "CT" and sequence is not None:
        raise InputError(src, f"sequence {sequence!r} applies to CHAOS's MR part only")
    sequence = sequence or "T2SPIR"
    if modality == "MR" and sequence not in SEQUENCES:
        raise InputError(src, f"sequence must be one of {list(SEQUENCES)}, got {sequence!r}")
    dicom_sub, ground_sub, tag = ("DICOM_anon", "Ground", "ct") if modality == "CT" else SEQUENCES[sequence]
    names = ("liver",) if modality == "CT" else tuple(sorted((n for *_, n in MR_RANGES), key=AMOS15.index))
    space = LabelSpace(names)
    index = {n: space.index(n) for n in names}
    patients = _patients(src, modality)
    annotated: dict[str, list[str]] = {}
    with atomic_output_dir(out) as tmp:
        for patient in progress_bar(patients, desc=f"convert chaos {modality}", unit="case", enabled=progress):
            files, pixels, headers = _read_slices(patient / dicom_sub)
            masks = _read_masks(patient / ground_sub, files, pixels[0].shape)
            order, affine = _geometry(files, headers)
            # (slices, rows, cols) in stacking order -> (cols, rows, slices), the affine's voxel axes
            image = np.stack([pixels[k] for k in order]).transpose(2, 1, 0)
            label = np.stack([_labels(*masks[k], modality, index) for k in order]).transpose(2, 1, 0)
            if np.all(image == np.round(image)) and image.min() >= -32768 and image.max() <= 32767:
                image = image.astype(np.int16)  # integer HU / MR intensities: half the size of float32
            else:
                image = image.astype(np.float32)
            case_id = f"chaos_{tag}_{int(patient.name):02d}" if patient.name.isdigit() else f"chaos_{tag}_{patient.name}"
            save_volume(image, affine, tmp / "imagesTr" / f"{case_id}_0000.nii.gz")
            save_volume(label, affine, tmp / "labelsTr" / f"{case_id}.nii.gz")
            annotated[case_id] = list(names)
        info = {"format": "chaos", "source": str(src.resolve()), "modality": modality,
                **({"sequence": sequence} if modality == "MR" else {})}
        write_dataset_json(tmp, dataset_json(
            space, len(annotated), name=out.name, modality=modality, annotated=annotated,
            groups=dict.fromkeys(annotated, f"chaos_{modality.lower()}"), extra={"partialseg": {"convert": info}},
        ))
    return out


__all__ = ["MR_RANGES", "SEQUENCES", "convert_chaos"]
