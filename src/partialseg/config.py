"""Typed experiment configuration: dataclasses, YAML files and ``key=value`` overrides.

A run's resolved configuration is written to ``RUN/config.yaml`` and stored in every
checkpoint, so a result can always be traced back to the exact settings.

Method-specific options live in ``method.options`` and are checked against the options
dataclass the method registers (see ``partialseg.methods``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from partialseg.errors import InputError, PartialsegError


@dataclass
class DataConfig:
    """Preprocessing applied before training (see ``partialseg.preprocessing``)."""

    spacing: tuple[float, float, float] | None = None  # mm; None = the dataset's median spacing
    normalization: str = "tct"  # "tct": clip [-1024, 1024] → [0, 1]; "nnunet": CT percentile clip + z-score
    val_fraction: float = 0.2  # fraction of training cases held out for validation (at least one case)
    val_cases: list[str] = field(default_factory=list)  # explicit validation case ids (overrides val_fraction)
    #: where the shared preprocessed caches live (one per dataset and preprocessing, reused by every run);
    #: None: "<dataset>.partialseg-cache" beside the dataset folder
    cache_dir: str | None = None
    #: "blosc2" (compressed, ~6x less disk; the default) or "npy" (memory maps; faster while the cache fits in RAM)
    cache_storage: str = "blosc2"
    cache_workers: int = 0  # processes building the cache (0: one per core, at most 8, for CT-sized images)


@dataclass
class NetworkConfig:
    name: str = "unet_tct"  # "unet_tct" (TCT Table 6) or "dynunet" (nnU-Net-style)
    options: dict[str, Any] = field(default_factory=dict)  # e.g. {"base_channels": 16, "norm": "instance"}


@dataclass
class OptimConfig:
    name: str = "adam"  # "adam" or "sgd" (Nesterov, momentum 0.99, as nnU-Net)
    lr: float = 1e-3
    weight_decay: float = 3e-5
    momentum: float = 0.99
    schedule: str = "poly"  # "poly" (nnU-Net: lr·(1 − t/T)^0.9) or "constant"
    grad_clip: float = 12.0  # max gradient norm; 0 disables


@dataclass
class AugmentConfig:
    """Training augmentation. ``preset`` chooses the pipeline:

    - ``"light"`` (the default, and the CPU benchmark presets'): hand-written torch code run in the loader
      (``training.augment``): with ``p_rotate_scale`` a rotation about the S-I axis by up to
      ``max_rotation_deg`` and a scaling in ``scale_range``, with ``p_intensity`` contrast, brightness and
      gamma, with ``p_noise`` Gaussian noise of ``noise_std``. Weak, but cheap enough for 2-core CPU runs, and
      what every table in docs/ was measured with.
    - ``"nnunet"`` (the GPU benchmark preset ``full``): nnU-Net v2's default training transforms at its
      probabilities and ranges (``nnUNetTrainer.get_training_transforms``, Isensee et al. 2021), made of MONAI
      array transforms (``training.augment_nnunet``, which lists them): rotation (±30° about each axis, or
      ±180° in-plane for anisotropic patches) and scaling (0.7-1.4) from nnU-Net's larger source patch,
      noise, blur, brightness, contrast, low resolution, gamma with and without inversion. The light fields
      below (``p_rotate_scale`` to ``noise_std``) do not apply to it. With ``on_device`` the loader workers
      only crop (reading only the part of the larger patch a rotation uses) and the augmentation runs on the
      training device after the transfer, which is what lets a few CPU cores feed a GPU step; without it the
      workers augment.

    Both: mirroring only left-right, with probability ``p_mirror_lr``, at sampling time and with the left/right
    labels swapped (``sampling.mirror_left_right``): nnU-Net mirrors every axis (p 0.5 each), but a mirror
    without the swap would teach that a left kidney can lie on the right. Batches stay a pure function of
    ``(seed, rank, step)`` with either preset.
    """

    enabled: bool = True
    preset: str = "light"  # "light" or "nnunet" (see above)
    on_device: bool = True  # nnunet preset: augment on the training device (True) or in the loader workers
    p_rotate_scale: float = 0.2  # probability of a random rotation about the S-I axis and scaling
    max_rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    p_intensity: float = 0.3  # brightness / contrast / gamma
    p_noise: float = 0.15
    noise_std: float = 0.02  # in normalised units
    # A left-right mirror turns a liver into a left-sided one; allowed only with label swapping.
    p_mirror_lr: float = 0.0


@dataclass
class TrainConfig:
    steps: int = 1000  # optimiser steps in total
    batch_size: int | None = None  # None: planned from the memory budget (plan section)
    patch_size: tuple[int, int, int] | None = None  # voxels, RAS array order (x, y, z); None: planned
    foreground_fraction: float = 0.33  # share of patches centred on a voxel of an annotated class
    val_every: int = 100  # steps between validations on fixed patches (0: none; training.validation)
    val_full_every: int = 0  # steps between full sliding-window validations (0: only at the end, always run)
    val_patches: int = 4  # patches per validation case in the patch validation
    checkpoint_every: int = 50  # steps between checkpoints
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA
    amp_cpu: bool = False  # also on CPUs with native bf16: ~1.7x faster, but not bit-reproducible run to run
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    num_threads: int = 0  # CPU threads for torch; 0 = torch's default
    #: background processes making batches (sampling, augmentation); None: 0 on a CPU, up to 8 on a GPU.
    #: Batches depend only on (seed, step), so this never changes results.
    num_workers: int | None = None
    sw_overlap: float = 0.25  # sliding-window overlap for validation and prediction
    #: "auto": per organ, keep only the largest connected component at prediction time where that helped on
    #: the validation cases (decided after the last validation, nnU-Net's rule); "none": never
    postprocessing: str = "auto"


@dataclass
class PlanConfig:
    """Planning (``partialseg.preprocessing.plan``): what fills ``data.spacing``, ``train.patch_size``,
    ``train.batch_size`` (and ``dynunet``'s patch and spacing) when they are left unset."""

    memory_gb: float = 8.0  # training memory budget per device (nnU-Net v2's default target)
    anisotropy_threshold: float = 3.0  # nnU-Net's: a coarse axis this many times the others is anisotropic
    min_batch_size: int = 2
    max_dataset_fraction: float = 0.05  # a batch covers at most this share of the dataset's voxels


@dataclass
class MethodConfig:
    name: str = "marginal"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExperimentConfig:
    method: MethodConfig = field(default_factory=MethodConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | Path | None = None) -> ExperimentConfig:
        cfg = _build(cls, d, source, "")
        cfg.validate(source)
        return cfg

    def validate(self, source: str | Path | None = None) -> None:
        """Check every numeric option against its range and every choice against its options.

        Raises ``InputError`` naming the key, so ``batch_size=0`` or ``device=gpu`` fails before
        a run folder exists instead of as a traceback (or a silent no-op) during training.
        """
        flat = _flatten(self.to_dict())
        for key, (lo, hi, lo_open, hi_open) in RANGES.items():
            value = flat[key]
            if value is None:  # data.spacing, train.patch_size, train.batch_size: None = planned
                continue
            for v in value if isinstance(value, list) else [value]:
                bad = not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi)
                if bad:
                    raise InputError(source, f"{key} = {_show(value)} is out of range: must be {_describe(lo, hi, lo_open, hi_open)}")
        for key, options in CHOICES.items():
            if flat[key] not in options:
                raise InputError(source, f"{key} = {flat[key]!r} is not one of {list(options)}")
        if not DEVICE_PATTERN.fullmatch(self.train.device):
            raise InputError(source, f"train.device = {self.train.device!r} is not a device name; use 'auto', 'cpu', "
                                     "'cuda' or 'cuda:<index>'")
        lo, hi = self.augment.scale_range
        if lo > hi:
            raise InputError(source, f"augment.scale_range = {[lo, hi]}: the first value must not exceed the second")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


INF = math.inf
#: dotted key -> (low, high, low excluded, high excluded); every int/float option has an entry (tested)
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "data.spacing": (0, INF, True, False),
    "data.val_fraction": (0, 1, True, True),
    "data.cache_workers": (0, INF, False, False),
    "optim.lr": (0, INF, True, False),
    "optim.weight_decay": (0, INF, False, False),
    "optim.momentum": (0, 1, False, True),
    "optim.grad_clip": (0, INF, False, False),
    "augment.p_rotate_scale": (0, 1, False, False),
    "augment.max_rotation_deg": (0, 180, False, False),
    "augment.scale_range": (0, INF, True, False),
    "augment.p_intensity": (0, 1, False, False),
    "augment.p_noise": (0, 1, False, False),
    "augment.noise_std": (0, INF, False, False),
    "augment.p_mirror_lr": (0, 1, False, False),
    "train.steps": (1, INF, False, False),
    "train.batch_size": (1, INF, False, False),
    "train.patch_size": (1, INF, False, False),
    "train.foreground_fraction": (0, 1, False, False),
    "train.val_every": (0, INF, False, False),
    "train.val_full_every": (0, INF, False, False),
    "train.val_patches": (1, INF, False, False),
    "train.checkpoint_every": (1, INF, False, False),
    "train.seed": (0, 2**32 - 1, False, False),
    "train.num_threads": (0, INF, False, False),
    "train.num_workers": (0, INF, False, False),
    "train.sw_overlap": (0, 1, False, True),
    "plan.memory_gb": (0, INF, True, False),
    "plan.anisotropy_threshold": (1, INF, True, False),
    "plan.min_batch_size": (1, INF, False, False),
    "plan.max_dataset_fraction": (0, 1, True, False),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "augment.preset": ("light", "nnunet"),
    "train.postprocessing": ("auto", "none"),
    "data.normalization": ("tct", "nnunet", "zscore"),
    "data.cache_storage": ("blosc2", "npy"),
    "optim.name": ("adam", "sgd"),
    "optim.schedule": ("poly", "constant"),
}
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _describe(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    if hi == INF:
        return f"{'>' if lo_open else '≥'} {lo:g}"
    return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def _show(value: Any) -> str:
    return str(value) if isinstance(value, list) else repr(value)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "options":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


#: settings that change how a run executes, not what it computes
EXECUTION_KEYS = ("train.num_threads", "train.num_workers", "train.device", "data.cache_dir", "data.cache_storage",
                  "data.cache_workers")


#: what planning fills in when a configuration leaves it unset (``partialseg.preprocessing.plan``)
PLANNED_KEYS = ("data.spacing", "train.patch_size", "train.batch_size", "network.options.patch_size",
                "network.options.spacing")


def _to_plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


def _build(cls: type, d: Any, source: str | Path | None, prefix: str) -> Any:
    if not isinstance(d, dict):
        raise InputError(source, f"{prefix or 'config'} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise InputError(source, f"unknown config key {prefix}{unknown[0]!r}; valid keys here: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            kwargs[f.name] = _coerce(hints[f.name], d[f.name], source, prefix + f.name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, source: str | Path | None, key: str) -> Any:
    """Check/convert a YAML value to the annotated field type, with an error naming the key."""
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, key + ".")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, source, key)
            except InputError as e:
                errors.append(e.problem)
        raise InputError(source, errors[0] if errors else f"{key}: invalid value {value!r}")
    if tp is Any:
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(source, f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, source, key) for v in value)
        if len(value) != len(args):
            raise InputError(source, f"{key} needs {len(args)} values, got {list(value)}")
        return tuple(_coerce(a, v, source, key) for a, v in zip(args, value))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise InputError(source, f"{key} must be a list, got {value!r}")
        return [_coerce(args[0], v, source, key) for v in value] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(source, f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise InputError(source, f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise InputError(source, f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise InputError(source, f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise InputError(source, f"{key} must be a string, got {value!r}")
    return value


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, *, base: dict[str, Any] | None = None
) -> ExperimentConfig:
    """Defaults (or ``base``, e.g. a trained run's saved configuration) ← YAML file ← ``key=value``
    overrides (dotted keys, YAML values).

    Example: ``load_config("cfg.yaml", ["train.steps=200", "method.name=tct", "method.options.lam=0.5"])``.
    """
    d: dict[str, Any] = ExperimentConfig().to_dict()
    if base is not None:
        _merge(d, base)
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise InputError(path, "config file does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(path, f"cannot parse YAML ({e})") from None
        if not isinstance(loaded, dict):
            raise InputError(path, "a config file must hold a mapping")
        _merge(d, loaded)
    for item in overrides or []:
        _merge(d, parse_override(item))
    return ExperimentConfig.from_dict(d, path)


def parse_override(item: str) -> dict[str, Any]:
    """``"a.b.c=1"`` → ``{"a": {"b": {"c": 1}}}``; the value is parsed as YAML (``[1,2]``, ``true``, ``0.5``)."""
    if "=" not in item:
        raise PartialsegError(f"override {item!r} must look like key=value, e.g. train.steps=200")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    out: dict[str, Any] = {}
    cur = out
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k != "options":
            _merge(base[k], v)
        elif isinstance(v, dict) and isinstance(base.get(k), dict):  # options: merge keys too
            base[k] = {**base[k], **v}
        else:
            base[k] = v
