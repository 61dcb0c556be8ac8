"""The weight-free default generalist: a box-prompted 3D random walker with intensity priors.

Runs on a CPU with numpy/scipy only, on the region of interest spanned by the prompts.

Algorithm (one object, prompts = the paper's two orthogonal 2D boxes, or any boxes):

1. **ROI.** The 3D box spanned by the prompts (``roi_from_prompts``), dilated by ``margin``
   voxels. Everything below happens inside it; the mask is empty outside.
2. **Image.** HU clipped to ``[-400, 600]`` (air and bone only need to be "far"), then a Gaussian
   of ``smoothing`` voxels against the noise.
3. **Certain background (seeds, x = 0).** On each prompt slice, the voxels outside that slice's
   box (the box is the object's bounding box on that slice, plus padding); and the faces of the
   ROI that are not on the volume border (the ROI is larger than the object by ``margin``).
4. **Intensity model.** Background: a histogram of the seed intensities. Object: one Gaussian,
   fitted by EM to the intensities inside the boxes as a two-part mixture whose background part
   is held fixed to that histogram (the boxes hold object *and* background). EM starts from the
   median and spread of the central part of the boxes. Per voxel, ``prior`` = posterior
   probability of the object; in the ``margin`` outside the spanned box the prior odds are
   multiplied by ``outside_odds``.
5. **Random walker with priors** (Grady 2005, two labels): minimise
   ``x^T L x + gamma * sum_v [prior_v (1 - x_v)^2 + (1 - prior_v) x_v^2]`` with the seeds fixed,
   i.e. solve ``(L_UU + gamma I) x_U = gamma prior_U - L_UM x_M`` by conjugate gradients (matrix
   free, 6-neighbourhood). Edge weights ``exp(-dI^2 / (2 (edge_scale * sigma_obj)^2))``, scaled by
   ``(h_min / h_d)^2`` for anisotropic spacing ``h``. The walker smooths the prior along the
   image while stopping at intensity edges.
6. **Clean-up.** ``x > 0.5``; the connected component (26-neighbourhood) that covers most of the
   prompt boxes; holes filled in 3D and slice by slice along the first prompt's axis.

Limits: one Gaussian per object, so organs with mixed content (stomach or bowel with gas, kidneys
with sinus fat in the mask) are under-segmented where the content differs; small organs at a
coarse spacing (adrenals of tens of voxels) are dominated by partial volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse.linalg import LinearOperator, cg

from partialseg.generalist.base import Generalist
from partialseg.generalist.prompts import BoxPrompt, prompts_bbox, roi_from_prompts

__all__ = ["IntensityModel", "RandomWalkerGeneralist", "find_object_on_slices", "random_walker_with_prior"]

_CLIP = (-400.0, 600.0)
_BIN = 5.0  # HU per histogram bin


@dataclass(frozen=True)
class IntensityModel:
    """Object Gaussian (``mean``, ``std``, prior weight ``weight``) against a background histogram."""

    mean: float
    std: float
    weight: float
    bg_hist: np.ndarray  # probability per bin over _CLIP, bins of _BIN HU
    #: how well the object found on the prompt slices fits its boxes (0..1; see ``find_object_on_slices``)
    score: float = 0.0

    def bg_density(self, values: np.ndarray) -> np.ndarray:
        idx = np.clip(((values - _CLIP[0]) / _BIN).astype(np.int64), 0, len(self.bg_hist) - 1)
        return self.bg_hist[idx] / _BIN

    def fg_density(self, values: np.ndarray) -> np.ndarray:
        z = (values - self.mean) / self.std
        return np.exp(-0.5 * z * z) / (self.std * np.sqrt(2 * np.pi))

    def posterior(self, values: np.ndarray, prior_odds: float | np.ndarray = 1.0) -> np.ndarray:
        """P(object | intensity) with ``weight`` as prior, times ``prior_odds``."""
        f = self.weight * self.fg_density(values) * prior_odds
        g = (1.0 - self.weight) * self.bg_density(values)
        return f / np.maximum(f + g, 1e-30)


def background_histogram(values: np.ndarray) -> np.ndarray:
    """Smoothed histogram of background intensities over ``_CLIP`` (never zero: unseen values exist)."""
    nb = int(round((_CLIP[1] - _CLIP[0]) / _BIN))
    if values.size == 0:
        return np.full(nb, 1.0 / nb)
    hist = np.bincount(np.clip(((values - _CLIP[0]) / _BIN).astype(np.int64), 0, nb - 1), minlength=nb).astype(np.float64)
    hist = ndimage.gaussian_filter1d(hist, 1.5, mode="constant")
    hist /= hist.sum()
    return 0.98 * hist + 0.02 / nb


@dataclass
class SliceBox:
    """One prompt in ROI coordinates: the 2D plane ``k`` of ``axis``, its box and the tight box inside it."""

    axis: int
    k: int
    box: tuple[slice, slice]  # in the plane (axes ``others``)
    tight: tuple[slice, slice]  # box minus the padding, relative to ``box``

    @property
    def others(self) -> tuple[int, int]:
        return tuple(d for d in range(3) if d != self.axis)  # type: ignore[return-value]

    def index3d(self, box2d: bool = True) -> tuple[slice | int, ...]:
        """3D index of the box (or of the whole plane) in the ROI array."""
        idx: list[slice | int] = [slice(None)] * 3
        idx[self.axis] = self.k
        if box2d:
            for j, d in enumerate(self.others):
                idx[d] = self.box[j]
        return tuple(idx)


def _component_scores(cand: np.ndarray, tight: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """Label the 2D candidate mask; score each component by how well it fills out the tight box.

    score = IoU(bounding box of the component, tight box) * fraction of the component inside the
    tight box. The object's bounding box on a prompt slice *is* the tight box, and the object lies
    inside it; a band that also catches neighbours leaks out (lower fraction), one that catches
    only part of the object has a smaller bounding box (lower IoU).
    """
    lab, n = ndimage.label(cand)
    if n == 0:
        return lab, np.zeros(1)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    inside = np.bincount(lab[tight].ravel(), minlength=n + 1)
    t0, t1 = (tight[0].start, tight[0].stop), (tight[1].start, tight[1].stop)
    tarea = (t0[1] - t0[0]) * (t1[1] - t1[0])
    scores = np.zeros(n + 1)
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        a0, a1 = (sl[0].start, sl[0].stop), (sl[1].start, sl[1].stop)
        ix = max(0, min(a0[1], t0[1]) - max(a0[0], t0[0])) * max(0, min(a1[1], t1[1]) - max(a1[0], t1[0]))
        union = (a0[1] - a0[0]) * (a1[1] - a1[0]) + tarea - ix
        scores[i] = (ix / union) * (inside[i] / sizes[i])
    return lab, scores


def find_object_on_slices(
    img: np.ndarray, boxes: Sequence[SliceBox], noise: float, bands: Sequence[float] = (1.5, 2.5, 3.5)
) -> tuple[list[np.ndarray], float]:
    """The object on each prompt slice: one intensity band [mu - b, mu + b] for all slices, and on each
    slice the connected component of the band (inside the box) that best fills the tight box.

    Candidates: ``mu`` at the 5th..95th percentiles of the tight-box intensities, ``b`` in ``bands``
    times the noise. The pair with the best mean component score over the slices wins (ties go to the
    narrower band). Returns one 2D mask per slice (box-sized) and the winning score.
    """
    planes = [img[sb.index3d()] for sb in boxes]
    tight_vals = np.concatenate([p[sb.tight].ravel() for p, sb in zip(planes, boxes)])
    mus = np.unique(np.round(np.percentile(tight_vals, np.arange(5, 96, 5)), 1))
    best: tuple[float, list[np.ndarray]] = (-1.0, [np.zeros(p.shape, bool) for p in planes])
    for k in bands:
        half = max(k * noise, 3.0)
        for mu in mus:
            total, masks = 0.0, []
            for p, sb in zip(planes, boxes):
                lab, sc = _component_scores(np.abs(p - mu) <= half, sb.tight)
                i = int(sc.argmax())
                total += sc[i]
                masks.append(lab == i if i > 0 else np.zeros(p.shape, bool))
            total /= len(planes)
            if total > best[0] + 1e-3:
                best = (total, masks)
    return best[1], max(best[0], 0.0)


def _edge_weights(img: np.ndarray, spacing: Sequence[float], scale: float) -> list[np.ndarray]:
    h = np.asarray(spacing, np.float64)
    out = []
    for d in range(3):
        diff = np.diff(img, axis=d)
        w = np.exp(-(diff * diff) / (2.0 * scale * scale)) * (h.min() / h[d]) ** 2
        out.append(w.astype(np.float64))
    return out


def _shift_sum(w: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """sum over neighbours u of w_vu * x_u, for every voxel v."""
    out = np.zeros_like(x)
    for d in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[d] = slice(None, -1)
        hi[d] = slice(1, None)
        lo_t, hi_t = tuple(lo), tuple(hi)
        out[lo_t] += w[d] * x[hi_t]
        out[hi_t] += w[d] * x[lo_t]
    return out


def random_walker_with_prior(
    w: list[np.ndarray],
    prior: np.ndarray,
    seeds: np.ndarray,
    seed_values: np.ndarray,
    gamma: float,
    *,
    rtol: float = 1e-4,
    maxiter: int = 500,
) -> np.ndarray:
    """Solve ``(L_UU + gamma I) x_U = gamma prior_U - L_UM x_M`` matrix-free; returns x on the whole grid.

    ``w``: edge weights along each axis (shape reduced by one along that axis). ``seeds``: bool,
    voxels whose value is fixed to ``seed_values``.
    """
    shape = prior.shape
    deg = _shift_sum(w, np.ones(shape))
    free = ~seeds
    xm = np.where(seeds, seed_values, 0.0).astype(np.float64)
    b = gamma * prior - (-_shift_sum(w, xm))  # -L_UM x_M = + sum_w x_m
    b = np.where(free, b, 0.0)
    diag = np.where(free, deg + gamma, 1.0)

    def matvec(v: np.ndarray) -> np.ndarray:
        x = np.where(free, v.reshape(shape), 0.0)
        y = (deg + gamma) * x - _shift_sum(w, x)
        return np.where(free, y, v.reshape(shape)).ravel()

    n = int(np.prod(shape))
    op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    precond = LinearOperator((n, n), matvec=lambda v: v / diag.ravel(), dtype=np.float64)
    x0 = np.where(free, prior, 0.0).ravel()
    sol, _ = cg(op, b.ravel(), x0=x0, rtol=rtol, maxiter=maxiter, M=precond)
    return np.where(free, sol.reshape(shape), xm)


class RandomWalkerGeneralist(Generalist):
    """Box-prompted 3D random walker with intensity priors learned from the boxes (weight-free, CPU).

    Options: ``margin`` (voxels added around the box the prompts span; the mask is always inside
    that ROI), ``box_padding`` (the padding the prompts were made with, voxels: the object's
    bounding box on a prompt slice is the box minus this; IPnP's rho), ``smoothing`` (Gaussian
    sigma, voxels), ``gamma`` (weight of the intensity prior against the walker's smoothness),
    ``edge_scale`` (edge sensitivity in units of the object's intensity spread), ``outside_odds``
    (prior odds factor outside the spanned box), ``fill_holes``, ``keep_component``.
    """

    name = "random_walker"

    def __init__(
        self,
        *,
        margin: int = 8,
        box_padding: int = 5,
        smoothing: float = 0.8,
        gamma: float = 0.05,
        edge_scale: float = 1.0,
        outside_odds: float = 0.5,
        fill_holes: bool = True,
        keep_component: bool = True,
        rtol: float = 1e-4,
        maxiter: int = 400,
    ) -> None:
        if margin < 0 or box_padding < 0:
            raise ValueError(f"margin and box_padding must be >= 0 voxels, got {margin}, {box_padding}")
        if gamma <= 0 or edge_scale <= 0 or smoothing < 0 or outside_odds <= 0:
            raise ValueError("gamma, edge_scale and outside_odds must be > 0 and smoothing >= 0")
        self.margin = int(margin)
        self.box_padding = int(box_padding)
        self.smoothing = float(smoothing)
        self.gamma = float(gamma)
        self.edge_scale = float(edge_scale)
        self.outside_odds = float(outside_odds)
        self.fill_holes = bool(fill_holes)
        self.keep_component = bool(keep_component)
        self.rtol = float(rtol)
        self.maxiter = int(maxiter)
        self.last_model: IntensityModel | None = None

    def roi(self, shape: Sequence[int], prompts: Sequence[BoxPrompt]) -> tuple[slice, slice, slice]:
        """The region the mask is confined to."""
        return roi_from_prompts(prompts, shape, self.margin)

    def _slice_boxes(self, prompts: Sequence[BoxPrompt], origin: np.ndarray, shape: tuple[int, ...], full: tuple[int, ...]) -> list[SliceBox]:
        out = []
        for p in prompts:
            k = p.index - int(origin[p.axis])
            if not 0 <= k < shape[p.axis]:
                continue
            box, tight = [], []
            for d in (d for d in range(3) if d != p.axis):
                a, b = max(p.lo[d] - int(origin[d]), 0), min(p.hi[d] - int(origin[d]), shape[d])
                box.append(slice(a, b))
                # shrink by the padding, except where the box was clipped at the volume border
                pad = min(self.box_padding, max((b - a - 1) // 2, 0))
                t0 = pad if p.lo[d] > 0 else 0
                t1 = (b - a) - (pad if p.hi[d] < full[d] else 0)
                tight.append(slice(t0, max(t1, t0 + 1)))
            out.append(SliceBox(p.axis, k, tuple(box), tuple(tight)))  # type: ignore[arg-type]
        return out

    def segment(self, image: np.ndarray, spacing: Sequence[float], prompts: Sequence[BoxPrompt]) -> np.ndarray:
        image = self._check(image, spacing, prompts)
        out = np.zeros(image.shape, bool)
        if not prompts:
            return out
        roi = self.roi(image.shape, prompts)
        origin = np.array([s.start for s in roi])
        img = np.clip(image[roi].astype(np.float64), *_CLIP)
        if self.smoothing > 0:
            img = ndimage.gaussian_filter(img, self.smoothing, mode="nearest", truncate=3.0)
        shape = img.shape
        boxes = self._slice_boxes(prompts, origin, shape, image.shape)

        # certain background: outside each box on its slice, and the ROI faces inside the volume
        bg_seed = np.zeros(shape, bool)
        in_box = np.zeros(shape, bool)
        for sb in boxes:
            plane = np.ones(shape[: sb.axis] + shape[sb.axis + 1 :], bool)
            plane[sb.box] = False
            bg_seed[sb.index3d(False)] |= plane
            in_box[sb.index3d()] = True
        for d in range(3 if self.margin > 0 else 0):
            idx: list[slice] = [slice(None)] * 3
            if roi[d].start > 0:
                idx[d] = slice(0, 1)
                bg_seed[tuple(idx)] = True
            if roi[d].stop < image.shape[d]:
                idx[d] = slice(shape[d] - 1, shape[d])
                bg_seed[tuple(idx)] = True
        in_box &= ~bg_seed  # where two prompt slices cross, outside either box is background

        # the object on the prompt slices, and its intensity
        diffs = np.abs(np.diff(img, axis=int(np.argmin(spacing))))
        noise = max(float(1.4826 * np.median(diffs) / np.sqrt(2)), 2.0)
        masks2d, score = find_object_on_slices(img, boxes, noise)
        fg2d = np.zeros(shape, bool)
        fg_seed = np.zeros(shape, bool)
        for sb, m in zip(boxes, masks2d):
            idx = sb.index3d()
            fg2d[idx] |= m
            er = ndimage.binary_erosion(m)
            fg_seed[idx] |= er if er.sum() >= max(1, m.sum() // 4) else m
        fg2d &= in_box
        fg_seed &= in_box
        vals = img[fg2d]
        if vals.size >= 3:
            mu, sd = float(np.median(vals)), float(1.4826 * np.median(np.abs(vals - np.median(vals))))
        else:  # nothing found: the centre of the boxes
            vals = img[in_box]
            mu, sd = float(np.median(vals)), float(np.std(vals))
            fg_seed[:] = False
        sd = max(sd, noise, 3.0)
        bg_vals = np.concatenate([img[bg_seed], img[in_box & ~ndimage.binary_dilation(fg2d)]])
        weight = float(np.clip(fg2d.sum() / max(in_box.sum(), 1), 0.2, 0.8))
        model = IntensityModel(mu, sd, weight, background_histogram(bg_vals), score)
        self.last_model = model

        lo, hi = prompts_bbox(prompts)
        spanned = np.zeros(shape, bool)
        spanned[tuple(slice(max(l - o, 0), max(h - o, 0)) for l, h, o in zip(lo, hi, origin))] = True
        prior = model.posterior(img, np.where(spanned, 1.0, self.outside_odds))

        seeds = bg_seed | fg_seed
        w = _edge_weights(img, spacing, self.edge_scale * sd)
        x = random_walker_with_prior(
            w, prior, seeds, fg_seed.astype(np.float64), self.gamma, rtol=self.rtol, maxiter=self.maxiter
        )
        mask = self._clean(x > 0.5, fg_seed if fg_seed.any() else in_box, boxes[0].axis if boxes else 2)
        out[roi] = mask
        return out

    def _clean(self, mask: np.ndarray, anchor: np.ndarray, axis: int) -> np.ndarray:
        if not mask.any():
            return mask
        if self.keep_component:
            import cc3d

            lab = cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
            hits = np.bincount(lab[anchor & mask], minlength=int(lab.max()) + 1)
            hits[0] = 0
            if hits.max() == 0:  # nothing touches the anchor: keep the largest
                hits = np.bincount(lab.ravel())
                hits[0] = 0
            mask = lab == int(hits.argmax())
        if self.fill_holes:
            mask = ndimage.binary_fill_holes(mask)
            for k in range(mask.shape[axis]):
                sl: list[slice | int] = [slice(None)] * 3
                sl[axis] = k
                mask[tuple(sl)] = ndimage.binary_fill_holes(mask[tuple(sl)])
        return mask
