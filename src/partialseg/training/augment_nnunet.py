"""nnU-Net v2's default training augmentation, built from MONAI transforms (``augment.preset = "nnunet"``).

``nnUNetTrainer.get_training_transforms`` (nnU-Net v2.8, Isensee et al., Nature Methods 2021) applies, per
sample and in this order:

==============================  =====================================================================
spatial                         rotation p 0.2 (each axis uniform in ±30°; ±180° in-plane only when the
                                patch is anisotropic), scaling p 0.2 (one factor in [0.7, 1.4] for every
                                axis, > 1 zooms out), from a larger patch cropped back to the patch
Gaussian noise p 0.1            std uniform in [0, 0.1]
Gaussian blur p 0.2             then p 0.5 per channel; sigma uniform in [0.5, 1] per axis
multiplicative brightness p .15 factor from ``BGContrast((0.75, 1.25))``
contrast p 0.15                 mean kept, clipped to the old range; ``BGContrast((0.75, 1.25))``
simulate low resolution p 0.25  then p 0.5 per channel; one zoom in [0.5, 1] for all axes (in-plane
                                only when anisotropic), nearest-exact down, (tri)linear up
gamma, inverted image, p 0.1    gamma from ``BGContrast((0.7, 1.5))``, mean and std retained
gamma p 0.3                     the same without inversion
mirroring                       p 0.5 per axis in nnU-Net; here only left-right, at sampling time
                                with the label swap (``sampling.mirror_left_right``), never other axes
==============================  =====================================================================

``BGContrast(lo, hi)``: with probability 1/2 uniform in [lo, 1), else in [1, hi]. "Anisotropic" is nnU-Net's
``do_dummy_2d_data_aug``: the longest patch axis exceeds ``anisotropy_threshold`` (3) times the out-of-plane
axis, which nnU-Net puts first (the coarsest spacing) and which in partialseg's RAS arrays is the last, S-I,
axis ``Z``. Like nnU-Net, rotations and scalings act on voxel coordinates.

Each transform is MONAI's array transform (``Affine``, ``RandGaussianNoise``, ``GaussianSmooth``,
``ScaleIntensity``, ``ScaleIntensityFixedMean``, ``RandSimulateLowResolution``, ``AdjustContrast``), applied to
torch tensors on whatever device the batch is on. Every random number comes from
``numpy.random.default_rng([seed, rank, step, _STREAM])`` (:func:`draw_batch`), drawn on the host; MONAI's own
random draws (the noise, the low-resolution zoom) use random states seeded from it. So a batch is a pure function
of ``(seed, rank, step)``, independent of where the augmentation runs and of the sampling stream; on a GPU the
floating-point results differ from the CPU's only by rounding.

Labels are resampled nearest-neighbour; outside the larger patch the image is 0 and the label background,
as nnU-Net pads (``padding_mode_image="zeros"``, label -1 turned into 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

_STREAM = 0x6E6E55  # "nnU": keeps this stream apart from the sampling stream default_rng([seed, rank, step])


@dataclass(frozen=True)
class NnUNetAugment:
    """Probabilities and ranges; the defaults are nnU-Net v2's (``nnUNetTrainer.get_training_transforms``)."""

    p_rotation: float = 0.2
    p_scaling: float = 0.2
    scaling: tuple[float, float] = (0.7, 1.4)
    rotation_deg: float = 30.0  # isotropic patches: each of the three axes
    rotation_deg_in_plane: float = 180.0  # anisotropic patches: about the out-of-plane axis only
    anisotropy_threshold: float = 3.0  # nnU-Net's ANISO_THRESHOLD
    p_noise: float = 0.1
    noise_std: tuple[float, float] = (0.0, 0.1)  # nnU-Net's "noise_variance" is used as the std
    p_blur: float = 0.2
    p_blur_per_channel: float = 0.5
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)
    p_low_resolution: float = 0.25
    p_low_resolution_per_channel: float = 0.5
    low_resolution_zoom: tuple[float, float] = (0.5, 1.0)
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)

    def anisotropic(self, patch: Sequence[int]) -> bool:
        """nnU-Net's ``do_dummy_2d_data_aug`` for a RAS patch (X, Y, Z): Z is the out-of-plane axis."""
        return max(patch) / patch[2] > self.anisotropy_threshold

    def source_size(self, patch: Sequence[int]) -> tuple[int, int, int]:
        """The larger patch the spatial transform samples from (nnU-Net's ``initial_patch_size``).

        nnU-Net's ``get_patch_size``: the patch-size vector rotated by the largest angle (at most 90°) about
        each axis in turn, the largest absolute coordinates kept, divided by 0.85 (nnU-Net keeps v1's scale
        bound here, not 0.7); the out-of-plane axis is not enlarged for anisotropic patches. Rounded up so
        that the margin around the patch is even: the patch is then exactly the centre. ``patch`` when no
        spatial transform can happen.
        """
        if self.p_rotation <= 0 and self.p_scaling <= 0:
            return tuple(int(p) for p in patch)  # type: ignore[return-value]
        aniso = self.anisotropic(patch)
        angle = min(math.radians(self.rotation_deg_in_plane if aniso else self.rotation_deg), math.pi / 2)
        nn = np.array([patch[2], patch[0], patch[1]], dtype=float)  # nnU-Net's axis order: out-of-plane first
        size = nn.copy()
        for axis in range(3):
            size = np.maximum(size, np.abs(nn @ _rotation(axis, angle)))
        size = size / 0.85
        if aniso:
            size[0] = nn[0]
        out = np.floor(size).astype(int)  # nnU-Net's astype(int)
        ours = [out[1], out[2], out[0]]
        return tuple(int(s + (s - p) % 2) for s, p in zip(ours, patch))  # type: ignore[return-value]


def _rotation(axis: int, angle: float) -> np.ndarray:
    """batchgenerators' rotation matrix about ``axis`` (0, 1, 2), as in ``create_affine_matrix_3d``."""
    c, s = math.cos(angle), math.sin(angle)
    if axis == 0:
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == 1:
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _bg_contrast(rng: np.random.Generator, lo: float, hi: float) -> float:
    """batchgeneratorsv2's ``BGContrast``: as likely below 1 as above."""
    if rng.random() < 0.5 and lo < 1:
        return float(rng.uniform(lo, 1))
    return float(rng.uniform(max(lo, 1), hi))


@dataclass(frozen=True)
class SampleDraw:
    """The random choices for one sample. ``affine``: 3×3, output voxel offsets from the patch centre to
    source offsets from the source centre (array axes X, Y, Z), None: a plain centre crop."""

    affine: np.ndarray | None
    noise: tuple[float, int] | None  # (std, seed of MONAI's noise generator)
    blur_sigma: tuple[float, float, float] | None
    brightness: float | None
    contrast: float | None
    low_resolution_seed: int | None  # seeds RandSimulateLowResolution's zoom draw
    gamma_inverted: float | None
    gamma: float | None


def draw_sample(p: NnUNetAugment, patch: Sequence[int], rng: np.random.Generator) -> SampleDraw:
    """One sample's parameters, drawn in nnU-Net's order (spatial, noise, blur, brightness, contrast, low
    resolution, inverted gamma, gamma)."""
    aniso = p.anisotropic(patch)
    rotate, scale = rng.random() < p.p_rotation, rng.random() < p.p_scaling
    affine = None
    if rotate or scale:
        s = float(rng.uniform(*p.scaling)) if scale else 1.0
        if aniso:  # nnU-Net's 2D SpatialTransform on the in-plane axes; Z is neither rotated nor scaled
            a = math.radians(float(rng.uniform(-p.rotation_deg_in_plane, p.rotation_deg_in_plane))) if rotate else 0.0
            affine = np.diag([s, s, 1.0])
            affine[:2, :2] = _rotation(2, a)[:2, :2] * s
        else:
            ang = [math.radians(float(rng.uniform(-p.rotation_deg, p.rotation_deg))) if rotate else 0.0 for _ in range(3)]
            nn = _rotation(2, ang[2]) @ _rotation(1, ang[1]) @ _rotation(0, ang[0]) * s  # Rz Ry Rx S, nnU-Net order
            perm = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]])  # ours (X, Y, Z) = nnU-Net's (1, 2, 0)
            affine = perm @ nn @ perm.T
    noise = (float(rng.uniform(*p.noise_std)), int(rng.integers(2**31))) if rng.random() < p.p_noise else None
    blur = None
    if rng.random() < p.p_blur and rng.random() < p.p_blur_per_channel:
        blur = tuple(float(rng.uniform(*p.blur_sigma)) for _ in range(3))
    brightness = _bg_contrast(rng, *p.brightness) if rng.random() < p.p_brightness else None
    contrast = _bg_contrast(rng, *p.contrast) if rng.random() < p.p_contrast else None
    low = None
    if rng.random() < p.p_low_resolution and rng.random() < p.p_low_resolution_per_channel:
        low = int(rng.integers(2**31))
    gamma_inv = _bg_contrast(rng, *p.gamma) if rng.random() < p.p_gamma_inverted else None
    gamma = _bg_contrast(rng, *p.gamma) if rng.random() < p.p_gamma else None
    return SampleDraw(affine, noise, blur, brightness, contrast, low, gamma_inv, gamma)  # type: ignore[arg-type]


def draw_batch(p: NnUNetAugment, patch: Sequence[int], batch_size: int, seed: int, rank: int, step: int) -> list[SampleDraw]:
    """Every sample's parameters for step ``step``: a pure function of ``(seed, rank, step)``."""
    rng = np.random.default_rng([int(seed), int(rank), int(step), _STREAM])
    return [draw_sample(p, patch, rng) for _ in range(batch_size)]


def source_region(draw: SampleDraw, patch: Sequence[int], source: Sequence[int]) -> tuple[list[int], list[int]]:
    """The box ``[lo, hi)`` of the source patch that the sample's resampling reads (all of it a centre crop).

    The output patch's voxel centres map to a box symmetric about the source centre (an affine about the
    centre maps the corner pairs ±c to ±A c), so the box is the same after a left-right mirror. One voxel of
    margin covers the trilinear and nearest neighbours. The loader reads only this box from the case:
    everything else of the source patch is never sampled, so the result is the same as from a full crop.
    """
    if draw.affine is None:
        lo = [(s - q) // 2 for s, q in zip(source, patch)]
        return lo, [a + q for a, q in zip(lo, patch)]
    half = np.abs(draw.affine) @ ((np.asarray(patch, dtype=float) - 1) / 2) + 1  # largest |A c| per axis, + 1 voxel
    centre = (np.asarray(source, dtype=float) - 1) / 2
    lo = np.clip(np.floor(centre - half), 0, None).astype(int)
    hi = np.minimum(np.ceil(centre + half).astype(int) + 1, np.asarray(source))
    return [int(v) for v in lo], [int(v) for v in hi]


def _plain(x: Tensor) -> Tensor:
    """MONAI returns MetaTensors; the batch holds plain tensors."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def _spatial(image: Tensor, label: Tensor, draw: SampleDraw, patch: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(1, *source) image and (1, *source) float label → (1, *patch) each: MONAI ``Affine`` or a centre crop."""
    if draw.affine is None:
        lo = [(s - q) // 2 for s, q in zip(image.shape[1:], patch)]
        box = tuple(slice(a, a + q) for a, q in zip(lo, patch))
        return image[(slice(None), *box)], label[(slice(None), *box)]
    from monai.transforms import Affine

    a = np.eye(4)
    a[:3, :3] = draw.affine
    kw = dict(affine=a, spatial_size=tuple(patch), padding_mode="zeros", image_only=True, device=image.device)
    img = _plain(Affine(mode="bilinear", **kw)(image))
    lab = _plain(Affine(mode="nearest", **kw)(label))
    return img, lab


def _intensity(x: Tensor, draw: SampleDraw, anisotropic: bool) -> Tensor:
    """nnU-Net's intensity transforms on one (1, X, Y, Z) image, in its order, with MONAI's array transforms."""
    from monai.transforms import (
        AdjustContrast,
        GaussianSmooth,
        RandGaussianNoise,
        RandSimulateLowResolution,
        ScaleIntensity,
        ScaleIntensityFixedMean,
    )

    if draw.noise is not None:
        t = RandGaussianNoise(prob=1.0, mean=0.0, std=draw.noise[0], sample_std=False)
        t.set_random_state(seed=draw.noise[1])
        x = _plain(t(x))
    if draw.blur_sigma is not None:
        x = _plain(GaussianSmooth(sigma=draw.blur_sigma, approx="sampled")(x))  # sampled kernel, as nnU-Net's
    if draw.brightness is not None:
        x = _plain(ScaleIntensity(minv=None, maxv=None, factor=draw.brightness - 1)(x))
    if draw.contrast is not None:
        x = _plain(ScaleIntensityFixedMean(factor=draw.contrast - 1, preserve_range=True, fixed_mean=True)(x))
    if draw.low_resolution_seed is not None:
        # anisotropic: nnU-Net leaves the out-of-plane axis alone (ignore_axes); as 2D slices Z is untouched
        t = RandSimulateLowResolution(prob=1.0, downsample_mode="nearest-exact",
                                      upsample_mode="bilinear" if anisotropic else "trilinear", zoom_range=(0.5, 1.0))
        t.set_random_state(seed=draw.low_resolution_seed)
        if anisotropic:
            x = _plain(t(x[0].permute(2, 0, 1))).permute(1, 2, 0)[None]
        else:
            x = _plain(t(x))
    if draw.gamma_inverted is not None:
        x = _plain(AdjustContrast(gamma=draw.gamma_inverted, invert_image=True, retain_stats=True)(x))
    if draw.gamma is not None:
        x = _plain(AdjustContrast(gamma=draw.gamma, invert_image=False, retain_stats=True)(x))
    return x


def augment_nnunet(image: Tensor, target: Tensor, draws: Sequence[SampleDraw], params: NnUNetAugment,
                   patch: Sequence[int]) -> tuple[Tensor, Tensor]:
    """image (B, 1, *source) float32, target (B, *source) int → (B, 1, *patch) float32, (B, *patch) int64.

    ``source`` is :meth:`NnUNetAugment.source_size` of ``patch`` (the patch itself when no spatial transform
    can happen); runs on ``image``'s device. Labels go through the resampling as float32 (exact for any label
    index below 2^24) and come back as int64.
    """
    aniso = params.anisotropic(patch)
    images, labels = [], []
    for i, draw in enumerate(draws):
        img, lab = _spatial(image[i], target[i][None].float(), draw, patch)
        images.append(_intensity(img, draw, aniso).to(torch.float32))
        labels.append(lab[0].round().long())
    return torch.stack(images), torch.stack(labels)


__all__ = ["NnUNetAugment", "SampleDraw", "augment_nnunet", "draw_batch", "draw_sample", "source_region"]
