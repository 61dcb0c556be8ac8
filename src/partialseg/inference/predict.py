"""Apply a trained model to NIfTI images and write label maps in each input's own geometry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from partialseg import checkpoint as ckpt
from partialseg.data.checks import warn_if_not_ct
from partialseg.errors import InputError
from partialseg.io import Volume, atomic_output_dir, load_volume, nifti_inputs, save_volume, write_json_atomic
from partialseg.labels import LabelSpace
from partialseg.methods.base import Method, get_method


@dataclass
class Predictor:
    """A loaded model with the preprocessing it was trained with."""

    net: nn.Module
    method: Method
    label_space: LabelSpace
    preprocess: Any  # PreprocessConfig
    stats: Any  # NormalizationStats | None
    patch_size: tuple[int, int, int]
    overlap: float
    device: torch.device
    amp: bool = True
    amp_cpu: bool = False
    in_channels: int = 1
    #: class values whose largest connected component alone is kept (chosen on validation by training)
    largest_component: tuple[int, ...] = ()
    #: one window per forward and logits blended in float16 (nnU-Net's predictor); ``None``: per volume,
    #: when its float32 logits would exceed :data:`LOW_MEMORY_ABOVE_GB` (:func:`low_memory_for`)
    low_memory: bool | None = None

    @classmethod
    def load(cls, run_or_model: str | Path, *, device: str = "auto", overlap: float | None = None, mirror: bool = False,
             low_memory: bool | None = None) -> Predictor:
        """From a run folder (its ``model.pt``) or a model file; ``mirror``: left-right mirror test-time
        augmentation (:class:`~partialseg.inference.sliding_window.LeftRightMirrored`, twice the time);
        ``low_memory``: one window per forward and logits blended in float16 (a 512×512×160 case with 16
        classes: about half the activations and half the blending buffers; labels may differ at near-ties);
        ``None`` (default): on for volumes whose float32 logits would exceed :data:`LOW_MEMORY_ABOVE_GB`."""
        from partialseg.networks import build_network
        from partialseg.preprocessing import NormalizationStats, PreprocessConfig
        from partialseg.runtime import resolve_device

        path = Path(run_or_model)
        if path.is_dir():
            path = path / ckpt.MODEL_FILE
        m = ckpt.load(path)
        if "state_dict" not in m or "network" not in m:
            raise InputError(path, "not a partialseg model file (no network/state_dict)")
        space = LabelSpace(tuple(m["label_space"]))
        method = get_method(m["method"]["name"])(space, m["method"]["options"])
        n = m["network"]
        net = method.wrap_network(build_network(n["name"], n["in_channels"], n["out_channels"], **n["options"]), training=False)
        net.load_state_dict(m["state_dict"])
        if mirror:
            from partialseg.inference.sliding_window import LeftRightMirrored, mirror_permutation

            net = LeftRightMirrored(net, mirror_permutation(space, int(n["out_channels"])))
        dev = resolve_device(device)
        net.to(dev).eval()
        return cls(
            net, method, space, PreprocessConfig.from_dict(m["preprocess"]),
            None if m.get("stats") is None else NormalizationStats.from_dict(m["stats"]),
            tuple(m["patch_size"]), float(m["sw_overlap"] if overlap is None else overlap), dev,
            bool(m.get("config", {}).get("train", {}).get("amp", True)),
            bool(m.get("config", {}).get("train", {}).get("amp_cpu", False)),
            int(n["in_channels"]),
            tuple(space.index(name) for name in m.get("postprocessing", {}).get("largest_component", []) if name in space.names),
            low_memory,
        )

    def window_probabilities(self, image: np.ndarray, *, argmax: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Sliding-window probabilities (C, X, Y, Z) of a preprocessed ``image`` (1, X, Y, Z), or with ``argmax``
        its label map (:func:`~partialseg.inference.sliding_window.sliding_window_probabilities`), in
        low-memory mode when :attr:`low_memory` says so or, unset, when :func:`low_memory_for` does."""
        from partialseg.inference.sliding_window import sliding_window_probabilities

        low = self.low_memory
        if low is None:
            low = low_memory_for(image.shape[1:], self.label_space.num_classes + 1)
        return sliding_window_probabilities(
            self.net, self.method.probabilities, image, self.patch_size, overlap=self.overlap, device=self.device,
            amp=self.amp, amp_cpu=self.amp_cpu, argmax=argmax, dtype=dtype, sw_batch_size=1 if low else 2,
            blend_dtype=torch.float16 if low else torch.float32,
        )

    def predict_volume(self, image: Volume, *, probabilities: bool = False, postprocess: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Label map (uint8, the input's shape/orientation) and optionally probabilities (C, ...) float16.

        ``postprocess``: apply the run's postprocessing (the organs whose largest connected component
        alone did better on validation; ``RUN/postprocessing.json``) to the label map."""
        from partialseg.preprocessing import preprocess_image, restore_to_original

        arr, meta = preprocess_image(image, self.preprocess, self.stats, self.preprocess.spacing)
        # labels only: streamed per slab, no (C, X, Y, Z) array; probabilities: kept in float16
        out = self.window_probabilities(arr, argmax=not probabilities, dtype=torch.float16).numpy()
        p = None
        if probabilities:
            p = restore_to_original(out, meta, is_label=False)
            labels = p.argmax(0)
        else:
            labels = restore_to_original(out, meta, is_label=True)
        if self.largest_component and postprocess:
            from partialseg.inference.postprocess import keep_largest_components

            labels = keep_largest_components(labels, self.largest_component)
        return labels.astype(np.uint8), None if p is None else p.astype(np.float16)


#: above this many GB of float32 logits (classes × voxels at the model's spacing) a volume is predicted with
#: one window per forward and float16 blending: a 512×512×160 CT with 16 classes (2.7 GB) took 0.56 of the
#: memory and 0.79 of the time of float32 blending (docs/measurements.md); the quick preset's phantoms
#: (a few MB) keep float32 blending, so their results reproduce
LOW_MEMORY_ABOVE_GB = 1.0


def low_memory_for(shape: tuple[int, ...], classes: int) -> bool:
    """Whether a volume of ``shape`` (X, Y, Z) at the model's spacing is predicted in low-memory mode."""
    return 4 * classes * int(np.prod(shape)) > LOW_MEMORY_ABOVE_GB * 2**30


def output_name(image_path: Path) -> str:
    """``case_0000.nii.gz`` (nnU-Net channel suffix) → ``case.nii.gz``; other names are kept."""
    name = image_path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            if stem.endswith("_0000"):
                stem = stem[:-5]
            return stem + ".nii.gz"
    return name


def check_channels(files: list[Path], num_channels: int) -> None:
    """Each case must come as exactly the model's channels; otherwise an ``InputError`` naming the file.

    ``case_0000.nii.gz``, ``case_0001.nii.gz``, ... are the channels of one case (nnU-Net naming);
    a name without a ``_XXXX`` suffix is a single-channel image. Without this check a
    two-channel case would be segmented as two unrelated images.
    """
    from partialseg.data.dataset import split_channel

    cases: dict[str, dict[int, Path]] = {}
    for f in files:
        parsed = split_channel(f.name, ".nii.gz") or split_channel(f.name, ".nii")
        if parsed is None:
            if num_channels != 1:
                raise InputError(f, f"the model takes {num_channels} channels: name the files <case>_0000, <case>_0001, ...")
            continue
        cases.setdefault(parsed[0], {})[parsed[1]] = f
    for case, chans in cases.items():
        if sorted(chans) != list(range(num_channels)):
            extra = sorted(set(chans) - set(range(num_channels)))
            bad = chans[extra[0]] if extra else next(iter(chans.values()))
            raise InputError(bad, f"case {case!r} has channel(s) {[f'{c:04d}' for c in sorted(chans)]}, but the model "
                                  f"takes {num_channels} channel(s) (_0000{'' if num_channels == 1 else f'.._{num_channels - 1:04d}'})")
    if num_channels != 1:
        raise InputError(files[0], f"the model takes {num_channels} channels; partialseg predicts single-channel CT only")


def predict_folder(
    run: str | Path,
    input_dir: str | Path,
    out_dir: str | Path,
    *,
    probabilities: bool = False,
    device: str = "auto",
    overlap: float | None = None,
    progress: bool = True,
    postprocess: bool = True,
    mirror: bool = False,
    low_memory: bool | None = None,
) -> list[Path]:
    """Predict every ``*.nii.gz``/``*.nii`` in ``input_dir`` (or one file) into the new folder ``out_dir``
    (``postprocess``: with the run's postprocessing, see :meth:`Predictor.predict_volume`)."""
    input_dir = Path(input_dir)
    files = nifti_inputs(input_dir)
    predictor = Predictor.load(run, device=device, overlap=overlap, mirror=mirror, low_memory=low_memory)
    check_channels(files, predictor.in_channels)
    names = [output_name(f) for f in files]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(input_dir, f"several inputs map to the same output name {dup[0]!r}")
    written = []
    from partialseg.progress import progress as progress_bar

    with atomic_output_dir(out_dir) as tmp:
        for f, name in progress_bar(list(zip(files, names)), desc="predict", unit="case", enabled=progress):
            vol = load_volume(f, dtype=np.float32)
            if predictor.preprocess.normalization != "zscore":  # a CT model: its input must be HU
                warn_if_not_ct(vol.array, f)
            labels, probs = predictor.predict_volume(vol, probabilities=probabilities, postprocess=postprocess)
            save_volume(labels, vol.affine, tmp / name)
            if probs is not None:
                np.savez_compressed(tmp / (name[: -len(".nii.gz")] + "_probabilities.npz"), probabilities=probs,
                                    classes=np.array(["background", *predictor.label_space.names]))
            written.append(Path(out_dir) / name)
        from partialseg.evaluation.evaluate import PRED_LABELS_FILE

        # the model's label space travels with its label maps, so `evaluate` can match classes by name
        applied = [predictor.label_space.name(k) for k in predictor.largest_component] if postprocess else []
        write_json_atomic({"labels": {"background": 0, **{n: i + 1 for i, n in enumerate(predictor.label_space.names)}},
                           "model": str(Path(run).resolve()), "largest_component": applied}, tmp / PRED_LABELS_FILE)
    return written
