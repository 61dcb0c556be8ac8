"""One IPnP round's pseudo-labels from an nnU-Net v2 specialist (methods.md "IPnP" steps 1-5).

IPnP (Foundation Model-guided Iteratively Prompting and Pseudo-Labeling; its specialist is nnU-Net v2,
Isensee et al. 2021): the specialist's probabilities p and argmax give each unannotated organ's boxes, the
generalist segments it, P_k = G_k ∩ ROI_k ∩ {p_k ≥ τ}, the entropy rule keeps the better of two rounds.
Everything after the prediction is partialseg's own code (:mod:`partialseg.pseudolabel`); this module only
gives it what partialseg's preprocessed cases would: per case, on the image's own grid reoriented to RAS
(``to_ras``: flips and permutations, exactly invertible),

- ``probs``: ``(C, X, Y, Z)`` float32 softmax from nnU-Net's ``nnUNetPredictor`` (nnU-Net's preprocessing,
  sliding window, test-time mirroring and resampling back to the image grid),
- ``hu``: ``(X, Y, Z)`` float32 raw intensities, ``label``: ``(X, Y, Z)`` int16 partial labels,
- ``spacing``: mm per RAS axis.

A case's probabilities are freed before the next case is predicted; its pseudo-full label map goes to the
store (:mod:`partialseg.pseudolabel.store`, one file per case, written atomically, so a killed round resumes
from the cases it finished) with its decisions and quality rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.data.dataset import Case, PartialDataset
from partialseg.errors import PartialsegError
from partialseg.io import Volume, write_json_atomic

__all__ = ["NnunetSpecialist", "build_generalist_for", "case_grid", "pseudo_label_round"]

#: nnU-Net readers whose arrays are the NIfTI voxel array with its axes reversed (``z, y, x``), so that the
#: specialist sees a case as it saw it in training and its output maps back onto partialseg's array exactly
_READERS = ("SimpleITKIO", "NibabelIO")


def case_grid(affine: np.ndarray) -> np.ndarray:
    """nnU-Net-independent orientation (nibabel ``io_orientation``) taking the file's array to RAS."""
    from nibabel.orientations import io_orientation

    return io_orientation(affine)


class NnunetSpecialist:
    """nnU-Net's predictor for one trained fold (:func:`~partialseg.engines.nnunet.predict.load_predictor`:
    the trainer class from partialseg's registry, ``overlap`` = 1 - nnU-Net's tile step; ``mirror`` off by
    default, since nnU-Net's mirroring flips left-right without swapping left/right organ labels)."""

    def __init__(self, checkpoint: Path, *, device: str, mirror: bool = False, overlap: float = 0.5) -> None:
        from partialseg.engines.nnunet.predict import load_predictor

        fold = Path(checkpoint).parent
        plans = json.loads((fold.parent / "plans.json").read_text())
        if plans.get("image_reader_writer") not in _READERS:
            raise PartialsegError(f"{fold.parent}: nnU-Net reads these images with {plans.get('image_reader_writer')}; "
                                  f"the ipnp procedure maps its arrays onto the NIfTI grid for {list(_READERS)} only")
        self.predictor = load_predictor(fold.parent, fold.name[len("fold_"):], checkpoint=Path(checkpoint).name,
                                        device=device, overlap=overlap, mirror=mirror)

    def probabilities(self, image: Volume) -> np.ndarray:
        """``(C, X, Y, Z)`` float32 softmax on ``image``'s grid reoriented to RAS."""
        from partialseg.preprocessing.geometry import to_ras

        arr = np.ascontiguousarray(np.asarray(image.array, dtype=np.float32).transpose(2, 1, 0))[None]
        _, probs = self.predictor.predict_single_npy_array(arr, {"spacing": list(image.spacing[::-1])}, None, None, True)
        probs = np.asarray(probs, dtype=np.float32).transpose(3, 2, 1, 0)  # (z, y, x) of nnU-Net -> the file's (x, y, z)
        return np.ascontiguousarray(np.moveaxis(to_ras(probs, case_grid(image.affine)), -1, 0))


def _ras_case(case: Case, ds: PartialDataset) -> tuple[Volume, np.ndarray, np.ndarray, tuple[float, float, float], np.ndarray | None]:
    """(image as read, HU (X, Y, Z), label (X, Y, Z), spacing, reference or None), RAS."""
    from partialseg.preprocessing.geometry import ras_spacing, to_ras

    image = case.load_image()
    ornt = case_grid(image.affine)
    label = np.ascontiguousarray(to_ras(case.load_label(ds.label_space, image).array, ornt))
    ref = case.load_reference(ds.label_space, image)
    ref = None if ref is None else np.ascontiguousarray(to_ras(ref.array, ornt))
    hu = np.ascontiguousarray(to_ras(image.array, ornt), dtype=np.float32)
    return image, hu, label, ras_spacing(image.affine), ref


def build_generalist_for(opts: Any, ds: PartialDataset, run: Path, paths: dict[str, Path], settings: dict[str, Any],
                         progress: bool) -> Any:
    """The IPnP generalist as partialseg's loop builds it; ``boxnet`` without a ``model_folder`` is trained into
    ``RUN/generalist/`` on the annotated organs of nnU-Net's training cases (fold ``settings["fold"]``)."""
    from partialseg.generalist.base import build_generalist

    gopts = dict(opts.generalist_options)
    if opts.generalist == "random_walker":
        gopts.setdefault("box_padding", opts.padding)  # it locates the organ inside the padded box
    if opts.generalist == "boxnet" and "model_folder" not in gopts:
        gopts["model_folder"] = str(_train_boxnet(run / "generalist", ds, paths, settings, opts, progress).parent)
        gopts.setdefault("device", settings["device"])
    return build_generalist(opts.generalist, **gopts)


def _train_boxnet(out: Path, ds: PartialDataset, paths: dict[str, Path], settings: dict[str, Any], opts: Any,
                  progress: bool) -> Path:
    """Box-prompted network on the training cases' annotations (RAS image grids, which must share one spacing:
    boxnet is only valid at its training spacing). The cases are held in RAM while it trains."""
    from partialseg.engines.nnunet.ipnp import round_dataset_name
    from partialseg.generalist.boxnet import BoxNetCase, BoxNetConfig, existing_boxnet, train_boxnet

    split = json.loads((paths["nnUNet_preprocessed"] / round_dataset_name(0, ds.root.name) / "splits_final.json").read_text())
    train_ids = set(split[int(settings["fold"])]["train"])
    cfg = BoxNetConfig.from_options({"padding": opts.padding, **opts.generalist_training})
    cases, spacings = [], []
    for case in (c for c in ds.cases if c.case_id in train_ids):
        _, hu, label, spacing, _ = _ras_case(case, ds)
        cases.append(BoxNetCase(hu, label, case.annotated, case.case_id))
        spacings.append(spacing)
    if not np.allclose(spacings, spacings[0], rtol=1e-3):
        raise PartialsegError("boxnet is trained at one voxel spacing, and these images have several: use the "
                              "random_walker or nninteractive generalist, or give generalist_options.model_folder")
    done = existing_boxnet(out, cfg, spacings[0])
    return done or train_boxnet(cases, out, spacings[0], cfg, device=settings["device"], progress=progress)


def _round_case(case: Case, ds: PartialDataset, specialist: Any, last: dict[str, Any]) -> Any:
    """A raw case as partialseg's round reads it (RAS, read on demand). ``last``: one slot shared by a round's
    cases, holding the arrays of the case read last, so that a case's labels and its prediction read the
    files once while no earlier case is kept."""
    from partialseg.pseudolabel.round import RoundCase

    def load() -> tuple[Volume, np.ndarray, np.ndarray, tuple[float, float, float], np.ndarray | None]:
        if last.get("case") != case.case_id:
            last.clear()  # the previous case's arrays go before this one's are read
            last["arrays"], last["case"] = _ras_case(case, ds), case.case_id
        return last["arrays"]

    def arrays() -> tuple[np.ndarray, np.ndarray | None]:
        _, _, label, _, ref = load()
        return label, ref

    def predict() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
        image, hu, _, spacing, _ = load()
        return specialist().probabilities(image), hu, spacing

    return RoundCase(case.case_id, case.annotated, arrays, predict)


def pseudo_label_round(ds: PartialDataset, run: Path, r: int, checkpoint: Path, generalist: Any, opts: Any,
                       settings: dict[str, Any], ipnp_settings: dict[str, Any], progress: bool) -> Path:
    """Round ``r``'s pseudo-full label map of every case into ``RUN/pseudo/round_<r>/`` (cases already there are
    kept; :func:`partialseg.pseudolabel.round.pseudo_label_round`: one prediction per case, the organ gate's
    pass included), its ``decisions.json`` and the run's quality table; returns the folder."""
    from partialseg.pseudolabel import round as ipnp_round
    from partialseg.pseudolabel.quality import decisions_rounds, write_quality
    from partialseg.pseudolabel.store import has_pseudo, save_pseudo

    pdir = run / "pseudo" / f"round_{r}"
    pdir.mkdir(parents=True, exist_ok=True)
    space = ds.label_space
    loaded: list[NnunetSpecialist] = []

    def specialist() -> NnunetSpecialist:  # built on first use: a resumed round may need no prediction
        if not loaded:
            loaded.append(NnunetSpecialist(checkpoint, device=settings["device"], mirror=bool(ipnp_settings["mirror"]),
                                           overlap=float(ipnp_settings["overlap"])))
        return loaded[0]

    last: dict[str, Any] = {}
    cases = [_round_case(c, ds, specialist, last) for c in ds.cases]
    if opts.pseudo_source == "none":  # the step control: IPnP's schedule, no pseudo-label (the round's dataset needs files)
        for case in cases:
            if not has_pseudo(pdir, case.case_id):
                save_pseudo(pdir, case.case_id, case.arrays()[0], frozenset(), extra={"decisions": {}, "quality": None})
        write_json_atomic({c.case_id: {} for c in cases}, pdir / "decisions.json")
    else:
        ipnp_round.pseudo_label_round(cases, run, r, generalist, opts, space, progress=progress)
    rows = [row for q in range(1, opts.rounds + 1) for row in ipnp_round.round_quality_rows(cases, run, q, space)]
    write_quality(run, rows, decisions_rounds(run, opts.rounds), space)
    return pdir
