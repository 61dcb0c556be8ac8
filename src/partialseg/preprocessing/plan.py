"""Planning: a dataset fingerprint and a memory budget → target spacing, patch, network topology, batch.

The rules are nnU-Net v2's ``ExperimentPlanner`` for 3d_fullres (Isensee et al., Nat. Methods
2021, "rule-based parameters"), applied to partialseg's networks:

- **Spacing**: the per-axis median of the cases' spacings. When the coarsest axis is more than
  ``anisotropy_threshold`` (3) times the next-coarsest *and* has fewer than a third of the voxels of
  the others, it takes the 10th percentile of that axis' spacings instead (finer: resampling 5 mm
  slices to the median would throw away the thin-slice cases' detail), but never finer than the
  other axes.
- **Patch**: start isotropic in millimetres with the volume of 256³ voxels, capped by the median
  shape on the target grid, padded up to what the network's poolings divide. While the estimated
  memory of ``min_batch_size`` patches exceeds ``memory_gb``, take one divisor step off the axis
  whose patch is largest relative to the median shape.
- **Topology**: the network's own rule at that patch and spacing (``dynunet``: nnU-Net's per-axis
  pooling and 1×3×3 kernels on anisotropic axes; ``unet_tct``: the paper's four 2×2×2 poolings).
- **Batch**: as many patches as the budget holds, at most what covers ``max_dataset_fraction`` (5 %)
  of the dataset's voxels, at least ``min_batch_size`` (2).

Memory is estimated, not measured: every leaf module's output on PyTorch's ``meta`` device (no
allocation, milliseconds) times :data:`ACTIVATION_BYTES`, measured here on the CPU in float32 as
4.2-6.9 bytes of peak training memory per output element (forward + backward, ``unet_tct`` and
``dynunet``); under bf16 autocast the real peak is lower, so the estimate errs on the safe side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.config import ExperimentConfig, PlanConfig
from partialseg.errors import InputError, PartialsegError
from partialseg.preprocessing.config import Shape, Spacing
from partialseg.preprocessing.fingerprint import DatasetFingerprint

#: peak training bytes per element of leaf-module output (float32 forward + backward, measured on CPU)
ACTIVATION_BYTES = 6.0
#: nnU-Net v2's initial 3D patch: the volume of 256³ voxels, isotropic in mm
INITIAL_PATCH_VOXELS = 256**3
PLAN_FORMAT = "partialseg-plan"
#: a multiple of 2 ** 5: five halvings, nnU-Net's most per axis
_POOLABLE = 32


@dataclass(frozen=True)
class Plan:
    """What planning decided, and the figures it decided from."""

    spacing: Spacing
    median_shape: Shape
    patch_size: Shape
    batch_size: int
    network: str
    network_options: dict[str, Any]
    size_divisor: Shape
    estimated_gb: float  # for ``batch_size`` patches
    memory_gb: float
    anisotropic: bool
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "spacing": list(self.spacing),
            "median_shape": list(self.median_shape),
            "patch_size": list(self.patch_size),
            "batch_size": self.batch_size,
            "network": self.network,
            "network_options": dict(self.network_options),
            "size_divisor": list(self.size_divisor),
            "estimated_gb": self.estimated_gb,
            "memory_gb": self.memory_gb,
            "anisotropic": self.anisotropic,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        if d.get("format") != PLAN_FORMAT:
            raise PartialsegError("not a partialseg plan")
        return cls(
            spacing=tuple(float(v) for v in d["spacing"]),  # type: ignore[arg-type]
            median_shape=tuple(int(v) for v in d["median_shape"]),  # type: ignore[arg-type]
            patch_size=tuple(int(v) for v in d["patch_size"]),  # type: ignore[arg-type]
            batch_size=int(d["batch_size"]),
            network=str(d["network"]),
            network_options=dict(d["network_options"]),
            size_divisor=tuple(int(v) for v in d["size_divisor"]),  # type: ignore[arg-type]
            estimated_gb=float(d["estimated_gb"]),
            memory_gb=float(d["memory_gb"]),
            anisotropic=bool(d["anisotropic"]),
            notes=tuple(d.get("notes", ())),
        )

    def summary(self) -> str:
        sp = " × ".join(f"{s:g}" for s in self.spacing)
        return (
            f"spacing {sp} mm; median shape {'×'.join(map(str, self.median_shape))}; "
            f"patch {'×'.join(map(str, self.patch_size))} (divisible by {'×'.join(map(str, self.size_divisor))}); "
            f"batch {self.batch_size}; {self.network}; estimated {self.estimated_gb:.1f} of {self.memory_gb:g} GB"
            + ("; anisotropic" if self.anisotropic else "")
        )


def target_spacing(fp: DatasetFingerprint, anisotropy_threshold: float = 3.0) -> tuple[Spacing, bool]:
    """nnU-Net v2's 3d_fullres target spacing (module docstring) and whether the anisotropy rule fired."""
    spacings = np.array(fp.spacings, dtype=np.float64)
    target = np.percentile(spacings, 50, axis=0)
    sizes = np.percentile(np.array(fp.shapes, dtype=np.float64), 50, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    aniso_spacing = target[worst] > anisotropy_threshold * max(target[a] for a in others)
    aniso_voxels = sizes[worst] * anisotropy_threshold < min(sizes[a] for a in others)
    if aniso_spacing and aniso_voxels:
        axis = float(np.percentile(spacings[:, worst], 10))
        finest_other = max(target[a] for a in others)
        target[worst] = max(finest_other, axis) + 1e-5 if axis < finest_other else axis
        return tuple(float(s) for s in target), True  # type: ignore[return-value]
    return tuple(float(s) for s in target), False  # type: ignore[return-value]


def _meta_network(method: str, method_options: Mapping[str, Any], network: str, network_options: Mapping[str, Any],
                  label_space: Any) -> Any:
    import torch

    from partialseg.methods import get_method
    from partialseg.networks import build_network

    m = get_method(method)(label_space, dict(method_options))
    with torch.device("meta"):
        return m.wrap_network(build_network(network, 1, m.output_channels(), **network_options))


def activation_elements(
    method: str, method_options: Mapping[str, Any], network: str, network_options: Mapping[str, Any],
    label_space: Any, patch: Shape,
) -> int:
    """Leaf-module output elements of one training patch through the method's network (built and
    run on the ``meta`` device: nothing is allocated)."""
    import torch

    net = _meta_network(method, method_options, network, network_options, label_space)
    count = [0]

    def hook(_mod: Any, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            count[0] += out.numel()

    handles = [mod.register_forward_hook(hook) for mod in net.modules() if not list(mod.children())]
    try:
        with torch.no_grad():
            net(torch.empty(1, 1, *patch, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return count[0]


def _pad_up(patch: Shape, divisor: Shape) -> Shape:
    return tuple(int(math.ceil(p / d) * d) for p, d in zip(patch, divisor, strict=True))  # type: ignore[return-value]


def make_plan(
    fp: DatasetFingerprint,
    label_space: Any,
    *,
    method: str = "marginal",
    method_options: Mapping[str, Any] | None = None,
    network: str = "unet_tct",
    network_options: Mapping[str, Any] | None = None,
    rules: PlanConfig | None = None,
    spacing: Spacing | None = None,
) -> Plan:
    """Plan training for ``fp`` (module docstring). ``spacing`` fixes the target spacing instead of
    planning it. ``network_options``'s own ``patch_size``/``spacing`` are replaced by the plan's."""
    rules = rules or PlanConfig()
    opts = {k: v for k, v in (network_options or {}).items() if k not in ("patch_size", "spacing")}
    notes: list[str] = []
    if spacing is None:
        spacing, anisotropic = target_spacing(fp, rules.anisotropy_threshold)
        if anisotropic:
            notes.append("anisotropic: the coarse axis takes the 10th percentile of its spacings")
    else:
        spacing, anisotropic = tuple(float(s) for s in spacing), False  # type: ignore[assignment]
    shapes = fp.resampled_shapes(spacing)
    median_shape = tuple(int(v) for v in np.median(shapes, axis=0))
    inv = 1.0 / np.asarray(spacing, dtype=np.float64)
    start = inv * (INITIAL_PATCH_VOXELS / float(np.prod(inv))) ** (1 / 3)
    patch = tuple(int(min(round(s), m)) for s, m in zip(start, median_shape, strict=True))
    budget = rules.memory_gb * 2**30

    def options_at(p: Shape | None) -> dict[str, Any]:
        return {**opts, **({} if p is None else {"patch_size": list(p)}), "spacing": list(spacing)}  # type: ignore[arg-type]

    def divisor_at(p: Shape) -> Shape:
        try:
            net = _meta_network(method, method_options or {}, network, options_at(p), label_space)
        except InputError:  # a network that checks its patch: ask it without one (fixed poolings)
            net = _meta_network(method, method_options or {}, network, options_at(None), label_space)
        return tuple(int(d) for d in net.size_divisor)  # type: ignore[return-value]

    memo: dict[Shape, tuple[Shape, Shape, int, dict[str, Any]]] = {}

    def topology(p: Shape) -> tuple[Shape, Shape, int, dict[str, Any]]:
        if p not in memo:
            memo[p] = _topology(p)
        return memo[p]

    def _topology(p: Shape) -> tuple[Shape, Shape, int, dict[str, Any]]:
        """The padded patch, its divisor, its activation count and the network options at it."""
        # the topology of a size with many factors of 2 (dynunet stops pooling an odd axis), as nnU-Net
        # plans poolings from the unpadded patch and pads the patch up to them afterwards
        div = divisor_at(_pad_up(p, (_POOLABLE,) * 3))  # type: ignore[arg-type]
        padded = _pad_up(p, div)
        for _ in range(4):  # the divisor can grow with the padded patch (dynunet pools more)
            try:
                div2 = divisor_at(padded)
                if _pad_up(padded, div2) != padded:
                    padded, div = _pad_up(padded, div2), div2
                    continue
                n = activation_elements(method, method_options or {}, network, options_at(padded), label_space, padded)
                return padded, div2, n, options_at(padded)
            except InputError:  # e.g. a one-voxel bottleneck: one more divisor step on the shortest axis
                a = int(np.argmin(padded))
                padded = tuple(v + div[a] if i == a else v for i, v in enumerate(padded))  # type: ignore[assignment]
        raise PartialsegError(f"planning: no patch near {p} suits network {network!r}")

    padded, div, n, o = topology(patch)  # type: ignore[arg-type]
    while n * ACTIVATION_BYTES * rules.min_batch_size > budget:
        ratios = [pp / m for pp, m in zip(padded, median_shape, strict=True)]
        smaller = None
        for a in sorted(range(3), key=lambda i: -ratios[i]):  # the largest against the median shape first
            # padding can restore a one-step cut (the divisor changes with the size), so cut further
            for cut in range(padded[a] - div[a], 0, -div[a]):
                patch = tuple(cut if i == a else v for i, v in enumerate(padded))  # type: ignore[assignment]
                cand = topology(patch)  # type: ignore[arg-type]
                if np.prod(cand[0]) < np.prod(padded):
                    smaller = cand
                    break
            if smaller is not None:
                break
        if smaller is None:
            raise InputError(None, f"planning: even the smallest patch {padded} does not fit {rules.memory_gb:g} GB; "
                             "raise plan.memory_gb")
        padded, div, n, o = smaller
    per_patch = n * ACTIVATION_BYTES
    by_memory = int(budget // per_patch)
    dataset_voxels = float(np.prod(shapes, axis=1).sum())
    by_coverage = int(round(rules.max_dataset_fraction * dataset_voxels / float(np.prod(padded))))
    batch = max(min(by_memory, by_coverage), rules.min_batch_size)
    if by_coverage < by_memory:
        notes.append(f"batch capped at {rules.max_dataset_fraction:.0%} of the dataset's voxels")
    out_opts = o if network == "dynunet" else {k: v for k, v in o.items() if k not in ("patch_size", "spacing")}
    return Plan(
        spacing=spacing,  # type: ignore[arg-type]
        median_shape=median_shape,  # type: ignore[arg-type]
        patch_size=padded,
        batch_size=batch,
        network=network,
        network_options=out_opts,
        size_divisor=div,
        estimated_gb=per_patch * batch / 2**30,
        memory_gb=rules.memory_gb,
        anisotropic=anisotropic,
        notes=tuple(notes),
    )


def needs_plan(cfg: ExperimentConfig) -> bool:
    """Whether ``cfg`` leaves a planned field unset."""
    opts = cfg.network.options
    return (cfg.data.spacing is None or cfg.train.patch_size is None or cfg.train.batch_size is None
            or (cfg.network.name == "dynunet" and ("patch_size" not in opts or "spacing" not in opts)))


def apply_plan(cfg: ExperimentConfig, fp: DatasetFingerprint, label_space: Any) -> tuple[ExperimentConfig, Plan | None]:
    """``cfg`` with every planned field it leaves unset (``data.spacing``, ``train.patch_size``,
    ``train.batch_size``; ``dynunet``'s ``patch_size``/``spacing`` options) filled from a plan of
    ``fp``; what the user set stays. Returns the plan, or ``None`` when nothing was left to plan."""
    if not needs_plan(cfg):
        return cfg, None
    opts = dict(cfg.network.options)
    plan = make_plan(
        fp, label_space, method=cfg.method.name, method_options=cfg.method.options, network=cfg.network.name,
        network_options=opts, rules=cfg.plan, spacing=cfg.data.spacing,
    )
    spacing = cfg.data.spacing if cfg.data.spacing is not None else plan.spacing
    patch = cfg.train.patch_size if cfg.train.patch_size is not None else plan.patch_size
    if cfg.network.name == "dynunet":
        opts.setdefault("patch_size", list(patch))
        opts.setdefault("spacing", list(spacing))
    out = replace(
        cfg,
        data=replace(cfg.data, spacing=tuple(spacing)),
        train=replace(cfg.train, patch_size=tuple(patch),
                      batch_size=cfg.train.batch_size if cfg.train.batch_size is not None else plan.batch_size),
        network=replace(cfg.network, options=opts),
    )
    return out, plan


def plan_for_dataset(cfg: ExperimentConfig, dataset: str | Path, label_space: Any = None) -> tuple[ExperimentConfig, Plan | None]:
    """:func:`apply_plan` on the fingerprint of ``dataset``: a dataset folder (its headers) or a
    prepared cache (its stored grids; the cache's spacing is then fixed)."""
    from partialseg.data.dataset import PartialDataset
    from partialseg.preprocessing.cache import PREPARED_JSON, PreparedDataset
    from partialseg.preprocessing.fingerprint import fingerprint_dataset, fingerprint_prepared

    dataset = Path(dataset)
    if not needs_plan(cfg):
        return cfg, None
    if (dataset / PREPARED_JSON).exists():
        prepared = PreparedDataset.load(dataset)
        if cfg.data.spacing is None:
            cfg = replace(cfg, data=replace(cfg.data, spacing=tuple(prepared.config.spacing)))  # type: ignore[arg-type]
        return apply_plan(cfg, fingerprint_prepared(prepared), label_space or prepared.label_space)
    ds = PartialDataset.load(dataset)
    return apply_plan(cfg, fingerprint_dataset(ds), label_space or ds.label_space)

