"""A learned box-prompted generalist: a 3D U-Net conditioned on box prompts (registry name ``"boxnet"``).

The weight-free ``random_walker`` is a poor generalist on coarse CT (≈0.5 mean DSC even from
ground-truth boxes), and nnInteractive needs downloaded weights and, in practice, a GPU. ``boxnet``
is the third option of the IPnP issue: a class-agnostic network that learns "segment the object
these boxes point at" from the annotated organs of the dataset at hand, so it needs no weights
from outside and trains in minutes on a CPU.

Input, for one object, in a window around the 3D box the prompts span (``prompts_bbox``)::

    channel 0: CT window, (clip(HU, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)
    channel 1: the prompt rectangles (1 on each 2D box's voxels of its slice, 0 elsewhere)
    channel 2: the spanned 3D box (1 inside, 0 outside)

Output: 2-channel softmax (background, object). The window is ``crop_size`` voxels centred on the
spanned box, grown to a multiple of 16 that holds the box plus a margin when the box is larger
(the U-Net is fully convolutional). Training samples an organ uniformly among the organs present,
then a case that annotates it, makes the paper's prompts from its annotation
(``box_prompts_from_mask``) with a random padding around ``padding`` and each box edge moved by up
to ``box_jitter`` voxels (at use the prompts come from the specialist's imperfect masks), and shifts
the window at random. Loss: CE + Dice (``full_loss``); Adam with poly decay.

The model is only valid at the voxel spacing it was trained at (``segment`` refuses another).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.errors import InputError, PartialsegError
from partialseg.generalist.base import Generalist
from partialseg.generalist.prompts import BoxPrompt, box_prompts_from_mask, prompts_bbox

__all__ = ["BoxNetCase", "BoxNetConfig", "BoxNetGeneralist", "boxnet_input", "prompt_channels", "train_boxnet"]

log = logging.getLogger("partialseg.boxnet")

MODEL_FILE = "boxnet.pt"
_CHECKPOINT = "checkpoint.pt"
_DIVISOR = 16  # four 2x2x2 poolings of the Table-6 U-Net


@dataclass
class BoxNetConfig:
    """Training settings of the box-prompted network (every field a ``generalist_training`` key)."""

    steps: int = 800  # ~3 min on a 2-core CPU at the cpu phantoms; give a GPU more
    batch_size: int = 2
    crop_size: tuple[int, int, int] = (48, 48, 32)
    lr: float = 3e-3
    base_channels: int = 16
    padding: int = 5  # the prompts' padding ρ; training draws it from [ρ - 2, ρ + 2]
    box_jitter: int = 2  # max voxels each box edge moves in training
    shift: int = 6  # max voxels the window centre moves off the box centre in training
    hu_window: tuple[float, float] = (-250.0, 350.0)
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        self.crop_size = tuple(int(v) for v in self.crop_size)  # type: ignore[assignment]
        self.hu_window = tuple(float(v) for v in self.hu_window)  # type: ignore[assignment]
        if len(self.crop_size) != 3 or any(v < _DIVISOR or v % _DIVISOR for v in self.crop_size):
            raise PartialsegError(f"boxnet: crop_size must be three multiples of {_DIVISOR}, got {self.crop_size}")
        if math.prod(self.crop_size) == _DIVISOR**3:
            raise PartialsegError("boxnet: crop_size 16x16x16 leaves a one-voxel bottleneck; make one axis 32")
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1 or self.base_channels < 1:
            raise PartialsegError("boxnet: steps, batch_size, checkpoint_every and base_channels must be >= 1")
        if self.lr <= 0 or self.padding < 0 or self.box_jitter < 0 or self.shift < 0:
            raise PartialsegError("boxnet: lr must be > 0; padding, box_jitter and shift >= 0")
        if not self.hu_window[0] < self.hu_window[1]:
            raise PartialsegError(f"boxnet: hu_window must be (low, high) with low < high, got {self.hu_window}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> BoxNetConfig:
        known = {f.name for f in fields(cls)}
        bad = sorted(set(options) - known)
        if bad:
            raise PartialsegError(f"boxnet: unknown training option(s) {bad}; known: {sorted(known)}")
        return cls(**options)


@dataclass
class BoxNetCase:
    """A training case: HU image ``(X, Y, Z)``, label map, and the classes its labels annotate."""

    image: np.ndarray
    label: np.ndarray
    annotated: frozenset[int]
    case_id: str = ""


# -- input encoding -------------------------------------------------------------------------------
def prompt_channels(shape: Sequence[int], prompts: Sequence[BoxPrompt], origin: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """``(2, *shape)`` float32 for the window at ``origin``: the prompt rectangles, and the 3D box they span.

    Both are computed in image coordinates, then shifted by ``origin`` and clipped to the window, so a
    prompt whose slice lies outside the window still shapes the 3D box.
    """
    out = np.zeros((2, *(int(s) for s in shape)), np.float32)
    if not prompts:
        return out
    for p in _in_window(prompts, origin, shape):
        out[(0, *p.slices)] = 1.0
    lo, hi = prompts_bbox(prompts)
    box = tuple(slice(max(a - o, 0), max(min(b - o, n), 0)) for a, b, o, n in zip(lo, hi, origin, shape))
    out[(1, *box)] = 1.0
    return out


def _window(lo: Sequence[int], hi: Sequence[int], crop: Sequence[int], margin: int = 4,
            offset: Sequence[int] = (0, 0, 0), grow: bool = True) -> tuple[list[int], list[int]]:
    """Origin and size of the input window centred on the box ``[lo, hi)`` (may reach outside the image).

    ``grow``: enlarge the window past ``crop`` to hold the box plus ``margin`` (inference); without it
    the window is exactly ``crop`` (training batches need one size) and a larger box is seen in part.
    """
    size = [max(c, math.ceil((h - l + 2 * margin) / _DIVISOR) * _DIVISOR) if grow else int(c)
            for l, h, c in zip(lo, hi, crop)]
    origin = [(l + h) // 2 - s // 2 + o for l, h, s, o in zip(lo, hi, size, offset)]
    return origin, size


def boxnet_input(image_hu: np.ndarray, prompts: Sequence[BoxPrompt], origin: Sequence[int], size: Sequence[int],
                 hu_window: Sequence[float]) -> np.ndarray:
    """The network input ``(3, *size)`` for the window at ``origin`` (outside the image: air, no box)."""
    from partialseg.training.sampling import crop_with_padding

    lo, hi = float(hu_window[0]), float(hu_window[1])
    # crop first: ``image_hu`` may be a memory map or a lazy HU view (pseudolabel.loop.HounsfieldView)
    img = crop_with_padding(image_hu, origin, size, pad_value=-1000.0).astype(np.float32, copy=False)
    img = (np.clip(img, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)
    boxes = prompt_channels(size, prompts, origin)
    return np.concatenate([img[None].astype(np.float32), boxes], axis=0)


def _in_window(prompts: Sequence[BoxPrompt], origin: Sequence[int], size: Sequence[int]) -> list[BoxPrompt]:
    """The prompts in window coordinates, clipped to the window; those outside it are dropped."""
    out = []
    for p in prompts:
        lo = [max(a - o, 0) for a, o in zip(p.lo, origin)]
        hi = [min(b - o, s) for b, o, s in zip(p.hi, origin, size)]
        if all(h > l for l, h in zip(lo, hi)):
            out.append(BoxPrompt(p.axis, lo[p.axis], tuple(lo), tuple(hi)))  # type: ignore[arg-type]
    return out


def _build_net(base_channels: int):
    from partialseg.networks import build_network

    return build_network("unet_tct", 3, 2, base_channels=base_channels, norm="instance")


# -- training --------------------------------------------------------------------------------------
Box = tuple[tuple[int, int, int], tuple[int, int, int]]


def organ_boxes(label: np.ndarray) -> dict[int, Box]:
    """Half-open bounding box ``(lo, hi)`` of every label value > 0 present in ``label`` (X, Y, Z), in one
    pass over the volume (``scipy.ndimage.find_objects``)."""
    from scipy.ndimage import find_objects

    out: dict[int, Box] = {}
    for k, sl in enumerate(find_objects(np.asarray(label)), start=1):
        if sl is not None:
            out[k] = (tuple(int(s.start) for s in sl), tuple(int(s.stop) for s in sl))  # type: ignore[assignment]
    return out


def organ_prompts(label: np.ndarray, k: int, box: Box, padding: int) -> list[BoxPrompt]:
    """``box_prompts_from_mask(label == k, padding=padding)``, reading only the organ's bounding box ``box``.

    The median slices and 2D boxes depend on the mask inside its bounding box only; the padding is added
    in volume coordinates so that it is clipped to the volume, not to the box.
    """
    lo, _ = box
    crop = np.asarray(label[tuple(slice(a, b) for a, b in zip(*box))]) == k
    out = []
    for p in box_prompts_from_mask(crop, padding=0):
        plo = [a + o - (padding if d != p.axis else 0) for d, (a, o) in enumerate(zip(p.lo, lo))]
        phi = [b + o + (padding if d != p.axis else 0) for d, (b, o) in enumerate(zip(p.hi, lo))]
        plo = [max(v, 0) for v in plo]
        phi = [min(v, n) for v, n in zip(phi, label.shape)]
        out.append(BoxPrompt(p.axis, p.index + lo[p.axis], tuple(plo), tuple(phi)))  # type: ignore[arg-type]
    return out


def _jittered_prompts(label: np.ndarray, k: int, box: Box, cfg: BoxNetConfig, rng: np.random.Generator) -> list[BoxPrompt]:
    pad = int(rng.integers(max(cfg.padding - 2, 0), cfg.padding + 3))
    out = []
    for p in organ_prompts(label, k, box, pad):
        lo, hi = list(p.lo), list(p.hi)
        for d in range(3):
            if d == p.axis:
                continue
            j = cfg.box_jitter
            lo[d] = int(np.clip(lo[d] + rng.integers(-j, j + 1), 0, label.shape[d] - 1))
            hi[d] = int(np.clip(hi[d] + rng.integers(-j, j + 1), lo[d] + 1, label.shape[d]))
        out.append(BoxPrompt(p.axis, p.index, tuple(lo), tuple(hi)))  # type: ignore[arg-type]
    return out


def _sample(cases: Sequence[BoxNetCase], by_organ: dict[int, list[int]], cfg: BoxNetConfig,
            rng: np.random.Generator, boxes: Sequence[dict[int, Box]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One training pair. ``boxes``: :func:`organ_boxes` of every case, computed once (else found here)."""
    from partialseg.training.sampling import crop_with_padding

    organs = sorted(by_organ)
    k = organs[int(rng.integers(len(organs)))]
    i = by_organ[k][int(rng.integers(len(by_organ[k])))]
    case = cases[i]
    label = np.asarray(case.label)
    box = boxes[i][k] if boxes is not None else organ_boxes(label)[k]
    prompts = _jittered_prompts(label, k, box, cfg, rng)
    lo, hi = prompts_bbox(prompts)
    offset = [int(rng.integers(-cfg.shift, cfg.shift + 1)) for _ in range(3)]
    origin, size = _window(lo, hi, cfg.crop_size, offset=offset, grow=False)
    x = boxnet_input(case.image, prompts, origin, size, cfg.hu_window)
    # crop first: the target needs the window only, not a whole-volume int64 copy (k > 0, so padding is background)
    y = (crop_with_padding(label, origin, size, pad_value=0) == k).astype(np.int64)
    return x, y


def existing_boxnet(out: str | Path, cfg: BoxNetConfig, spacing: Sequence[float]) -> Path | None:
    """``out/boxnet.pt`` if it exists and was trained with ``cfg`` at ``spacing``; None if absent; else an error."""
    from partialseg import checkpoint as ckpt

    f = Path(out) / MODEL_FILE
    if not f.exists():
        return None
    saved = ckpt.load(f)
    same_spacing = np.allclose(saved.get("spacing", []), [float(s) for s in spacing], rtol=1e-4) if len(saved.get("spacing", [])) == 3 else False
    if saved.get("config") != asdict(cfg) or not same_spacing:
        raise InputError(f, "this boxnet was trained with other settings or at another spacing; "
                         "delete its folder to train a new one")
    return f


def train_boxnet(
    cases: Sequence[BoxNetCase],
    out: str | Path,
    spacing: Sequence[float],
    cfg: BoxNetConfig | None = None,
    *,
    device: str = "auto",
    amp: bool = True,
    amp_cpu: bool = False,
    progress: bool = True,
) -> Path:
    """Train the box-prompted network on the annotated organs of ``cases``; returns ``out/boxnet.pt``.

    ``spacing``: the cases' voxel spacing (mm), saved with the model. Writes ``log.csv`` and
    ``curves.png``; a killed training resumes from ``out/checkpoint.pt`` (every ``checkpoint_every``
    steps) and reaches the same weights as an uninterrupted one on CPU in float32. An existing
    ``boxnet.pt`` trained with the same settings and spacing is returned as is (another is refused).
    """
    import torch

    from partialseg import checkpoint as ckpt
    from partialseg import losses as L
    from partialseg.io import write_json_atomic
    from partialseg.progress import progress as progress_bar
    from partialseg.runtime import resolve_device
    from partialseg.training.engine import lr_at, run_steps
    from partialseg.training.trainer import plot_curves, write_log

    cfg = cfg or BoxNetConfig()
    out = Path(out)
    model_file = existing_boxnet(out, cfg, spacing)
    if model_file is not None:
        return model_file
    model_file = out / MODEL_FILE
    by_organ: dict[int, list[int]] = {}
    boxes = [organ_boxes(c.label) for c in cases]  # once: a sample then reads only its organ's box
    for i, c in enumerate(cases):
        for k in sorted(c.annotated):
            if k > 0 and k in boxes[i]:
                by_organ.setdefault(int(k), []).append(i)
    if not by_organ:
        raise PartialsegError("boxnet: no annotated organ in the training cases (nothing to learn boxes from)")
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        net = _build_net(cfg.base_channels).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=3e-5)
    step, rows = 0, []
    if (out / _CHECKPOINT).exists():
        state = ckpt.load(out / _CHECKPOINT)
        if state["config"] != asdict(cfg):
            raise InputError(out / _CHECKPOINT, "boxnet checkpoint was written with other training settings; "
                             "delete the folder to start again")
        net.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        step, rows = int(state["step"]), list(state["rows"])
        log.info("boxnet: resuming at step %d", step)
    net.train()
    bar = progress_bar(total=cfg.steps, initial=step, desc="boxnet generalist", unit="step", enabled=progress)

    def next_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        # one generator per step: a resumed run draws exactly the batches an uninterrupted one does
        rng = np.random.default_rng([cfg.seed, step])
        xs, ys = zip(*(_sample(cases, by_organ, cfg, rng, boxes) for _ in range(cfg.batch_size)))
        return torch.from_numpy(np.stack(xs)).to(dev), torch.from_numpy(np.stack(ys)).to(dev)

    def loss_of(batch: tuple[torch.Tensor, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        loss = L.full_loss(net(batch[0]).float(), batch[1])
        return loss, {"loss": float(loss.detach())}

    def after_step(step: int, row: dict[str, Any], loss: torch.Tensor) -> None:
        rows.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            ckpt.save_atomic({"state_dict": net.state_dict(), "optimizer": opt.state_dict(), "step": step + 1,
                              "rows": rows, "config": asdict(cfg)}, out / _CHECKPOINT)

    run_steps(start=step, total=cfg.steps, next_batch=next_batch, loss_of=loss_of, optimizer=opt, parameters=net.parameters(),
              lr=lambda s: lr_at(s, cfg.steps, cfg.lr, "poly"), grad_clip=12.0, device=dev, amp=amp, amp_cpu=amp_cpu,
              after_step=after_step)
    bar.close()
    write_log(rows, out)
    plot_curves(rows, out / "curves.png", title="boxnet generalist")
    write_json_atomic({"organs": {str(k): len(v) for k, v in by_organ.items()}, "cases": len(cases)},
                      out / "training_data.json")
    ckpt.save_atomic({"kind": "partialseg-boxnet", "state_dict": net.state_dict(), "config": asdict(cfg),
                      "spacing": [float(s) for s in spacing], "amp": bool(amp)}, model_file)
    (out / _CHECKPOINT).unlink(missing_ok=True)
    return model_file


# -- inference -------------------------------------------------------------------------------------
class BoxNetGeneralist(Generalist):
    """The trained box-prompted network as an IPnP generalist.

    Args:
        model_folder: a folder with ``boxnet.pt`` (``train_boxnet``; an IPnP run trains one into
            ``RUN/generalist/`` when none is given).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        threshold: object probability above which a voxel is in the mask.
        spacing_tolerance: relative spacing difference accepted against the training spacing.
        amp_cpu: bf16 autocast on CPUs with native bf16 (on CUDA bf16 is used when the model was
            trained with it).
    """

    name = "boxnet"

    def __init__(self, model_folder: str | Path, device: str = "auto", threshold: float = 0.5,
                 spacing_tolerance: float = 0.1, amp_cpu: bool = False) -> None:
        import torch

        from partialseg import checkpoint as ckpt
        from partialseg.runtime import resolve_device

        folder = Path(model_folder)
        f = folder / MODEL_FILE
        if not f.exists():
            raise InputError(folder, f"no {MODEL_FILE} here: train one with IPnP's generalist='boxnet' "
                             "(it trains into RUN/generalist/) or partialseg.generalist.boxnet.train_boxnet")
        saved = ckpt.load(f)
        if saved.get("kind") != "partialseg-boxnet":
            raise InputError(f, "not a boxnet model")
        self.cfg = BoxNetConfig(**saved["config"])
        self.spacing = tuple(saved["spacing"])
        self.device = resolve_device(device)
        self.threshold = float(threshold)
        self.spacing_tolerance = float(spacing_tolerance)
        self.amp_cpu = bool(amp_cpu)
        self.amp = bool(saved.get("amp", True))
        self.net = _build_net(self.cfg.base_channels).to(self.device).eval()
        self.net.load_state_dict(saved["state_dict"])
        self._torch = torch

    def segment(self, image: np.ndarray, spacing: Sequence[float], prompts: Sequence[BoxPrompt]) -> np.ndarray:
        from scipy import ndimage

        from partialseg.runtime import autocast_context

        arr = self._check(image, spacing, prompts)
        rel = max(abs(float(a) - b) / b for a, b in zip(spacing, self.spacing))
        if rel > self.spacing_tolerance:
            raise InputError(None, f"boxnet was trained at spacing {self.spacing} mm; this image has "
                             f"{tuple(float(s) for s in spacing)} (resample it, or train boxnet on data at this spacing)")
        if not prompts:
            return np.zeros(arr.shape, bool)
        lo, hi = prompts_bbox(prompts)
        origin, size = _window(lo, hi, self.cfg.crop_size)
        x = self._torch.from_numpy(boxnet_input(arr, prompts, origin, size, self.cfg.hu_window)[None]).to(self.device)
        with self._torch.no_grad(), autocast_context(self.device, self.amp, self.amp_cpu):
            prob = self._torch.softmax(self.net(x).float(), dim=1)[0, 1].cpu().numpy()
        crop = prob > self.threshold
        if crop.any():
            # the object is one piece: keep the component that overlaps the prompt rectangles most
            lab, n = ndimage.label(crop)
            if n > 1:
                rect = prompt_channels(size, prompts, origin)[0] > 0
                hits = np.bincount(lab[rect], minlength=n + 1)[1:]
                sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
                best = int(np.argmax(hits)) + 1 if hits.any() else int(np.argmax(sizes)) + 1
                crop = lab == best
        out = np.zeros(arr.shape, bool)
        src = tuple(slice(max(o, 0), min(o + s, n)) for o, s, n in zip(origin, size, arr.shape))
        dst = tuple(slice(sl.start - o, sl.stop - o) for sl, o in zip(src, origin))
        out[src] = crop[dst]
        return out
