"""Sliding-window probabilities for a whole preprocessed volume (MONAI's inferer, Gaussian blending)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from partialseg.runtime import autocast_context

#: working memory of one slab (MONAI's output buffer of logits and its weight map)
DEFAULT_SLAB_GB = 2.0
#: Z slices of a slab's logits turned into probabilities at a time (no second (C, X, Y, Z) buffer)
_PROB_CHUNK = 8


def z_slabs(size: int, roi: int, overlap: float, max_len: int) -> list[tuple[int, int, int, int]]:
    """Slabs ``(start, stop, keep_start, keep_stop)`` along an axis of ``size`` voxels, each at most
    ``max_len`` long (but at least ``3 * roi``), whose kept parts tile ``0 .. size``.

    Exactness: MONAI's windows start at multiples of ``interval = int(roi * (1 - overlap))`` (the last
    one moved back to end at the border). A slab starting at a multiple of ``interval`` sees, for
    every voxel at least ``roi`` inside both of its ends (or at a volume border), exactly the windows
    the whole volume gives it, in the same order; so the kept parts blend to the same values.
    """
    interval = max(int(roi * (1 - overlap)), 1)
    max_len = max(int(max_len), 3 * roi)
    if size <= max_len:
        return [(0, size, 0, size)]
    out = []
    keep = 0
    start = 0
    while True:
        stop = min(start + max_len, size)
        keep_stop = size if stop == size else stop - roi
        out.append((start, stop, keep, keep_stop))
        if stop == size:
            return out
        keep = keep_stop
        # the next slab: the latest multiple of interval that still reaches ``roi`` below ``keep``
        start = ((keep - roi) // interval) * interval


class LeftRightMirrored(nn.Module):
    """Mirror test-time augmentation along the patient's left-right axis (array axis 0 in RAS; dim 2 of
    ``(B, C, X, Y, Z)``): the mean of the logits of the image and of its mirror image, whose
    left/right channels are swapped back (``permutation``: output channel → its mirror channel). Only
    left-right, and only with the swap, because an abdomen mirrored otherwise is not an abdomen the
    network was trained on (nnU-Net mirrors every axis it augmented with)."""

    def __init__(self, net: nn.Module, permutation: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("permutation", torch.as_tensor(list(permutation), dtype=torch.long), persistent=False)
        self.out_channels = len(self.permutation)

    def forward(self, x: Tensor) -> Tensor:
        mirrored = self.net(x.flip(2)).flip(2).index_select(1, self.permutation.to(x.device))
        return (self.net(x) + mirrored) / 2


def mirror_permutation(label_space, out_channels: int) -> list[int]:
    """The left/right channel swap of a network with ``out_channels`` outputs: one per label value
    (softmax methods) or one per organ (per-organ sigmoid)."""
    from partialseg.errors import PartialsegError

    lut = label_space.left_right_swap()
    if out_channels == label_space.num_channels:
        return [int(v) for v in lut]
    if out_channels == label_space.num_classes:
        return [int(v) - 1 for v in lut[1:]]
    raise PartialsegError(f"mirror test-time augmentation needs one output per label or per organ, this network has {out_channels}")


@torch.no_grad()
def _window_logits(net: nn.Module, x: Tensor, patch_size: Sequence[int], overlap: float, sw_batch_size: int,
                   blend_dtype: torch.dtype = torch.float32) -> Tensor:
    """MONAI's Gaussian-blended logits ``(1, C, *spatial)`` of ``x`` ``(1, in, *spatial)``, blended in ``blend_dtype``."""
    from monai.inferers import sliding_window_inference

    roi = tuple(int(p) for p in patch_size)
    if blend_dtype == x.dtype:
        return sliding_window_inference(x, roi_size=roi, sw_batch_size=sw_batch_size, predictor=net, overlap=overlap,
                                        mode="gaussian", padding_mode="replicate")
    # MONAI blends in its input's dtype: it gets a low-precision copy, which sets that dtype, and every window
    # is read from the full-precision image by its coordinates (nnU-Net's choice: float32 input, float16 sums).
    # Padded here as MONAI would pad (replicate, the odd voxel after), so that the coordinates agree.
    lo = [max(r - n, 0) // 2 for r, n in zip(roi, x.shape[2:])]
    hi = [max(r - n, 0) - a for r, n, a in zip(roi, x.shape[2:], lo)]
    padded = any(lo) or any(hi)
    if padded:
        x = torch.nn.functional.pad(x, [v for d in reversed(range(3)) for v in (lo[d], hi[d])], mode="replicate")

    def predict(_low: Tensor, slices: list[list[slice]]) -> Tensor:
        window = torch.cat([x[tuple(s)] for s in slices]).to(_low.device)
        return net(window).to(blend_dtype)

    out = sliding_window_inference(x.to(blend_dtype), roi_size=roi, sw_batch_size=sw_batch_size, predictor=predict,
                                   overlap=overlap, mode="gaussian", with_coord=True)
    if padded:
        out = out[(slice(None), slice(None), *(slice(a, s - b) for a, b, s in zip(lo, hi, out.shape[2:])))]
    return out


@torch.no_grad()
def sliding_window_probabilities(
    net: nn.Module,
    to_probabilities,
    image: np.ndarray | Tensor,
    patch_size: Sequence[int],
    *,
    overlap: float = 0.25,
    device: torch.device | str = "cpu",
    amp: bool = True,
    amp_cpu: bool = False,
    sw_batch_size: int = 2,
    argmax: bool = False,
    dtype: torch.dtype = torch.float32,
    slab_gb: float = DEFAULT_SLAB_GB,
    blend_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``image`` (1, X, Y, Z) → class probabilities (C, X, Y, Z) on the CPU, in ``dtype``; with
    ``argmax``, the label map (X, Y, Z) int16 instead.

    Logits are blended with a Gaussian window (nnU-Net/MONAI) and converted to probabilities
    once, after blending. Volumes smaller than the patch are padded by the inferer. The volume is
    processed in slabs along Z (:func:`z_slabs`) so that the float32 working memory stays near
    ``slab_gb`` whatever the volume's size; with ``argmax`` only the labels of the whole volume are
    kept, with ``dtype=torch.float16`` the probabilities take half the memory. ``blend_dtype=torch.float16``
    blends the logits in half precision (nnU-Net's predictor does): half the slab's memory, the network
    still sees the float32 image; ``sw_batch_size``: windows per forward (1: the least activation memory).
    """
    device = torch.device(device)
    # np.array copies: the input is often a read-only memory map
    x = image if isinstance(image, Tensor) else torch.from_numpy(np.array(image, dtype=np.float32))
    x = x.float()[None]
    was_training = net.training
    net.eval()
    try:
        out: Tensor | None = None
        X, Y, Z = x.shape[2:]
        itemsize = torch.empty((), dtype=blend_dtype).element_size()
        per_slice = itemsize * X * Y * (int(getattr(net, "out_channels", 16)) + 2)
        slabs = z_slabs(Z, int(patch_size[2]), overlap, int(slab_gb * 2**30 // per_slice))
        for a, b, ka, kb in slabs:
            with autocast_context(device, amp, amp_cpu):
                logits = _window_logits(net, x[..., a:b].to(device), patch_size, overlap, sw_batch_size, blend_dtype)
            for z0 in range(ka, kb, _PROB_CHUNK):  # probabilities per voxel: chunks give the same values
                z1 = min(z0 + _PROB_CHUNK, kb)
                probs = to_probabilities(logits[..., z0 - a : z1 - a].float())[0]
                part = probs.argmax(0).to(torch.int16) if argmax else probs.to(dtype)
                if out is None:
                    out = torch.empty((*part.shape[:-1], Z), dtype=part.dtype)
                out[..., z0:z1] = part.cpu()
                del probs, part
            del logits
    finally:
        net.train(was_training)
    assert out is not None
    return out
