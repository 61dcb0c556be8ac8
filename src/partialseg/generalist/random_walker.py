"""The weight-free default generalist: a box-prompted 3D random walker with intensity priors.

Runs on a CPU with numpy/scipy only, inside the region the prompts span (about 0.05-0.5 s per
organ at 3-6 mm voxels). Algorithm, for one object and its prompts (usually the paper's axial and
sagittal 2D boxes):

1. **ROI.** The 3D box spanned by the prompts (``roi_from_prompts``) dilated by ``margin``
   voxels; the mask is empty outside it. HU clipped to ``[-400, 600]`` (air and bone only need
   to be "far") and smoothed by a Gaussian of ``smoothing`` voxels.
2. **Certain background** (seeds x = 0): on each prompt slice, the voxels outside that slice's
   box (a prompt box holds all of the object on its slice); the faces of the ROI that are not
   on the volume border.
3. **The object on the prompt slices.** A prompt box is the object's 2D bounding box on its
   slice plus ``box_padding`` voxels, so the *tight box* (box minus padding) is exactly what the
   object's own bounding box must match. Over candidate intensity bands ``mu +- b`` (``mu`` at the
   5th..95th percentiles of the tight-box intensities, ``b`` in ``bands`` x the noise sd), the
   part of the band (as thresholded or after a 2D opening; one connected component, or the union
   of the components lying inside the tight box) that scores best ``IoU(its bounding box, tight
   box) x fraction of it inside the tight box x (its share of the tight box)^coverage_power`` is
   the object on that slice (``best_object_in_box``); one band for all prompt slices.
   These components, eroded by ``seed_erosion`` x sqrt(area), are the object seeds (x = 1).
4. **Intensity prior.** Object: a Gaussian with the median and MAD-sd of the components.
   Background: a histogram of the background seeds and of the box voxels away from the
   components. ``prior`` = posterior probability of the object per voxel (odds x ``outside_odds``
   outside the spanned box).
5. **Random walker with priors** (Grady 2005, two labels): minimise
   ``x^T L x + gamma * sum_v [prior_v (1 - x_v)^2 + (1 - prior_v) x_v^2]`` with the seeds fixed,
   i.e. solve ``(L_UU + gamma I) x_U = gamma prior_U - L_UM x_M`` (sparse, 6-neighbourhood,
   Jacobi-preconditioned conjugate gradients). Edge weights ``exp(-dI^2 / (2 (edge_scale *
   sd_obj)^2))`` times ``(h_min / h_d)^2`` for anisotropic spacing ``h``. With a small ``gamma``
   the seeds drive the result and the prior decides where they do not reach.
   ``refits`` > 0 re-estimates the intensity model from the result and solves again (GrabCut-like).
6. **Clean-up.** ``x > threshold``; the connected component (26-neighbourhood) holding most of
   the object seeds; holes filled in 3D and slice by slice along the first prompt's axis.

The defaults were chosen on ``benchmarks/generalist_dsc.py`` (synthetic phantoms and the real
TotalSegmentator example CT, prompts from the reference with padding 5).

Limits: one Gaussian per object, so organs of mixed content (stomach or bowel with gas, a kidney
mask that includes sinus fat) are under-segmented where the content differs; thin or small
organs at a coarse spacing (adrenals of tens of voxels, pancreas, duodenum, esophagus) are
dominated by partial volume and by neighbours of the same intensity. A learned generalist
(``nninteractive``) is far better there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from partialseg.generalist.base import Generalist
from partialseg.generalist.prompts import BoxPrompt, prompts_bbox, roi_from_prompts
from partialseg.generalist.slice_objects import SliceBox, find_object_on_slices

__all__ = [
    "IntensityModel",
    "RandomWalkerGeneralist",
    "random_walker_with_prior",
]

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


def _smooth(img: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(img, sigma, mode="nearest", truncate=3.0) if sigma > 0 else img


def _noise(img: np.ndarray, spacing: Sequence[float]) -> float:
    """Robust noise sd: MAD of neighbour differences along the finest axis (edges are a minority)."""
    axes = [d for d in np.argsort(spacing, kind="stable") if img.shape[d] > 1]
    if not axes:
        return 2.0
    diffs = np.abs(np.diff(img, axis=int(axes[0])))
    return max(float(1.4826 * np.median(diffs) / np.sqrt(2)), 2.0)


def _core(mask: np.ndarray, fraction: float) -> np.ndarray:
    """``mask`` eroded by about ``fraction`` of its size (sqrt of area), keeping at least a quarter of it."""
    r = int(round(fraction * np.sqrt(mask.sum())))
    while r > 0:
        er = ndimage.binary_erosion(mask, iterations=r)
        if er.sum() >= max(1, mask.sum() // 4):
            return er
        r -= 1
    return mask


def _edge_weights(img: np.ndarray, spacing: Sequence[float], scale: float) -> list[np.ndarray]:
    h = np.asarray(spacing, np.float64)
    out = []
    for d in range(3):
        diff = np.diff(img, axis=d)
        w = np.exp(-(diff * diff) / (2.0 * scale * scale)) * (h.min() / h[d]) ** 2
        out.append(w.astype(np.float64))
    return out


def random_walker_with_prior(
    w: list[np.ndarray],
    prior: np.ndarray,
    seeds: np.ndarray,
    seed_values: np.ndarray,
    gamma: float,
    *,
    rtol: float = 1e-3,
    maxiter: int = 1000,
) -> np.ndarray:
    """Solve ``(L_UU + gamma I) x_U = gamma prior_U - L_UM x_M``; returns x on the whole grid.

    ``w``: edge weights along each axis (shape reduced by one along that axis), 6-neighbourhood.
    ``seeds``: bool, voxels whose value is fixed to ``seed_values``. The system over the free
    voxels is assembled as a sparse matrix and solved by Jacobi-preconditioned conjugate gradients
    started from the prior.
    """
    from scipy import sparse

    shape = prior.shape
    free = ~seeds
    nf = int(free.sum())
    x = np.where(seeds, seed_values, 0.0).astype(np.float64)
    if nf == 0:
        return x
    index = np.full(shape, -1, np.int64)
    index[free] = np.arange(nf)
    diag = np.full(nf, float(gamma))
    rhs = gamma * prior[free].astype(np.float64)
    rows, cols, vals = [], [], []
    for d in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[d] = slice(None, -1)
        b[d] = slice(1, None)
        ia, ib, wd = index[tuple(a)].ravel(), index[tuple(b)].ravel(), w[d].ravel()
        xa, xb = x[tuple(a)].ravel(), x[tuple(b)].ravel()
        fa, fb = ia >= 0, ib >= 0
        diag += np.bincount(ia[fa], wd[fa], minlength=nf)  # degree of free voxels (to any neighbour)
        diag += np.bincount(ib[fb], wd[fb], minlength=nf)
        both = fa & fb
        rows.append(ia[both])
        cols.append(ib[both])
        vals.append(-wd[both])
        only_a = fa & ~fb  # seeded neighbour moves to the right-hand side
        rhs += np.bincount(ia[only_a], wd[only_a] * xb[only_a], minlength=nf)
        only_b = fb & ~fa
        rhs += np.bincount(ib[only_b], wd[only_b] * xa[only_b], minlength=nf)
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    v = np.concatenate(vals)
    off = sparse.coo_matrix((v, (r, c)), shape=(nf, nf))
    A = (off + off.T + sparse.diags(diag)).tocsr()
    x[free] = _pcg(A, rhs, prior[free].astype(np.float64), 1.0 / diag, rtol, maxiter)
    return x


def _pcg(A: object, b: np.ndarray, x0: np.ndarray, dinv: np.ndarray, rtol: float, maxiter: int) -> np.ndarray:
    """Jacobi-preconditioned conjugate gradients, stopping at ``|r| <= rtol |b|``.

    Written out (not ``scipy.sparse.linalg.cg``) to keep vector reductions off BLAS: a threaded
    BLAS level-1 call costs milliseconds on a busy machine, far more than the sparse product.
    """
    x = x0.copy()
    r = b - A @ x  # type: ignore[operator]
    z = dinv * r
    p = z.copy()
    rz = float((r * z).sum())
    stop = rtol * float(np.sqrt((b * b).sum()))
    for _ in range(maxiter):
        if float(np.sqrt((r * r).sum())) <= stop:
            break
        ap = A @ p  # type: ignore[operator]
        alpha = rz / float((p * ap).sum())
        x += alpha * p
        r -= alpha * ap
        z = dinv * r
        rz_new = float((r * z).sum())
        p *= rz_new / rz
        p += z
        rz = rz_new
    return x


class RandomWalkerGeneralist(Generalist):
    """Box-prompted 3D random walker with intensity priors learned from the boxes (weight-free, CPU).

    Options (see the module docstring for where each acts): ``margin`` (voxels added around the
    box the prompts span; the mask is always inside that ROI), ``box_padding`` (the padding the
    prompts were made with, voxels: IPnP's rho; the object's bounding box on a prompt slice is
    the box minus this), ``smoothing`` / ``search_smoothing`` (Gaussian sigma in voxels for the
    walker / for finding the object on the prompt slices), ``bands``, ``coverage_power``,
    ``seed_erosion``, ``gamma`` (weight of the intensity prior against the seeds and the
    walker's smoothness), ``edge_scale``, ``outside_odds``, ``threshold``, ``refits``,
    ``fill_holes``, ``keep_component``, ``rtol`` / ``maxiter`` (conjugate gradients), ``max_voxels``
    (a larger ROI is block-averaged by integer factors, finest axes first, and the mask repeated back: the
    sparse system's memory grows with the ROI's voxels, tens of GB for an abdomen-sized box at 0.8 mm).
    ``last_model`` holds the intensity model of the last call (for inspection).
    """

    name = "random_walker"

    def __init__(
        self,
        *,
        margin: int = 8,
        box_padding: int = 5,
        smoothing: float = 0.5,
        search_smoothing: float = 0.5,
        bands: Sequence[float] = (1.5, 2.5, 3.5),
        coverage_power: float = 0.5,
        threshold: float = 0.6,
        refits: int = 0,
        gamma: float = 0.01,
        edge_scale: float = 1.0,
        outside_odds: float = 0.5,
        seed_erosion: float = 0.1,
        fill_holes: bool = True,
        keep_component: bool = True,
        rtol: float = 1e-3,
        maxiter: int = 1000,
        max_voxels: int = 4_000_000,
    ) -> None:
        if margin < 0 or box_padding < 0:
            raise ValueError(f"margin and box_padding must be >= 0 voxels, got {margin}, {box_padding}")
        if gamma <= 0 or edge_scale <= 0 or smoothing < 0 or outside_odds <= 0:
            raise ValueError("gamma, edge_scale and outside_odds must be > 0 and smoothing >= 0")
        self.margin = int(margin)
        self.box_padding = int(box_padding)
        self.smoothing = float(smoothing)
        self.search_smoothing = float(search_smoothing)
        self.bands = tuple(float(b) for b in bands)
        self.coverage_power = float(coverage_power)
        self.threshold = float(threshold)
        self.refits = int(refits)
        self.gamma = float(gamma)
        self.edge_scale = float(edge_scale)
        self.outside_odds = float(outside_odds)
        self.seed_erosion = float(seed_erosion)
        self.fill_holes = bool(fill_holes)
        self.keep_component = bool(keep_component)
        self.rtol = float(rtol)
        self.maxiter = int(maxiter)
        if max_voxels < 1000:
            raise ValueError(f"max_voxels must be >= 1000, got {max_voxels}")
        self.max_voxels = int(max_voxels)
        self.last_model: IntensityModel | None = None

    def roi(self, shape: Sequence[int], prompts: Sequence[BoxPrompt]) -> tuple[slice, slice, slice]:
        """The region the mask is confined to."""
        return roi_from_prompts(prompts, shape, self.margin)

    @staticmethod
    def _slice_boxes(prompts: Sequence[BoxPrompt], origin: np.ndarray, shape: tuple[int, ...], full: tuple[int, ...],
                     box_padding: int) -> list[SliceBox]:
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
                pad = min(box_padding, max((b - a - 1) // 2, 0))
                t0 = pad if p.lo[d] > 0 else 0
                t1 = (b - a) - (pad if p.hi[d] < full[d] else 0)
                tight.append(slice(t0, max(t1, t0 + 1)))
            out.append(SliceBox(p.axis, k, tuple(box), tuple(tight)))  # type: ignore[arg-type]
        return out

    def _coarse_factors(self, roi_shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, int, int]:
        """Integer subsampling per axis, finest axes first, so that the ROI has at most ``max_voxels`` voxels."""
        target = min(float(s) for s in spacing)
        factors = (1, 1, 1)
        while int(np.prod([-(-n // f) for n, f in zip(roi_shape, factors)])) > self.max_voxels:
            target *= 1.25
            factors = tuple(max(1, int(target / float(s))) for s in spacing)  # type: ignore[assignment]
        return factors

    def _segment_coarse(self, image: np.ndarray, spacing: Sequence[float], prompts: Sequence[BoxPrompt],
                        roi: tuple[slice, slice, slice], factors: tuple[int, int, int], box_padding: int) -> np.ndarray:
        """The walker on a block-averaged copy of the ROI's surroundings (its sparse system grows with the ROI's
        voxels: a 0.8 mm abdomen-sized box would need tens of GB), the mask repeated back to full resolution."""
        # the crop grows past the ROI by its margin and a block, so that the coarse problem does not touch the
        # volume's faces where the full one does not: ROI faces inside the volume stay background seeds
        grow = [(self.margin + 1) * f for f in factors]
        lo = [max(r.start - g, 0) for r, g in zip(roi, grow)]
        # the crop's start on the block grid; its end rounded up to whole blocks (edge-padded past the volume)
        hi = [min(r.stop + g, n) for r, g, n in zip(roi, grow, image.shape)]
        size = [-(-(b - a) // f) * f for a, b, f in zip(lo, hi, factors)]
        crop = image[tuple(slice(a, b) for a, b in zip(lo, hi))]
        crop = np.pad(crop, [(0, z - (b - a)) for a, b, z in zip(lo, hi, size)], mode="edge")
        c = [z // f for z, f in zip(size, factors)]
        coarse = crop.reshape(c[0], factors[0], c[1], factors[1], c[2], factors[2]).mean(axis=(1, 3, 5), dtype=np.float64)
        small = []
        for p in prompts:
            plo = [(v - a) // f for v, a, f in zip(p.lo, lo, factors)]
            phi = [min(-(-(v - a) // f), n) for v, a, f, n in zip(p.hi, lo, factors, c)]
            phi[p.axis] = plo[p.axis] + 1
            small.append(BoxPrompt(p.axis, plo[p.axis], tuple(plo), tuple(phi)))  # type: ignore[arg-type]
        mask = self._segment(coarse.astype(np.float32), [float(s) * f for s, f in zip(spacing, factors)], small,
                             int(round(box_padding / max(factors))))  # the prompts' padding, in coarse voxels
        for d, f in enumerate(factors):
            mask = np.repeat(mask, f, axis=d)
        out = np.zeros(image.shape, bool)
        out[tuple(slice(a, b) for a, b in zip(lo, hi))] = mask[tuple(slice(0, b - a) for a, b in zip(lo, hi))]
        return out

    def segment(self, image: np.ndarray, spacing: Sequence[float], prompts: Sequence[BoxPrompt]) -> np.ndarray:
        return self._segment(self._check(image, spacing, prompts), spacing, prompts, self.box_padding)

    def _segment(self, image: np.ndarray, spacing: Sequence[float], prompts: Sequence[BoxPrompt],
                 box_padding: int) -> np.ndarray:
        out = np.zeros(image.shape, bool)
        if not prompts:
            return out
        roi = self.roi(image.shape, prompts)
        factors = self._coarse_factors([r.stop - r.start for r in roi], spacing)
        if factors != (1, 1, 1):
            return self._segment_coarse(image, spacing, prompts, roi, factors, box_padding)
        origin = np.array([s.start for s in roi])
        raw = np.clip(image[roi].astype(np.float64), *_CLIP)
        img = _smooth(raw, self.smoothing)
        shape = img.shape
        boxes = self._slice_boxes(prompts, origin, shape, image.shape, box_padding)

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
        simg = _smooth(raw, self.search_smoothing)
        masks2d, score = find_object_on_slices(simg, boxes, _noise(simg, spacing), self.bands, True, self.coverage_power)
        noise = _noise(img, spacing)
        fg2d = np.zeros(shape, bool)
        fg_seed = np.zeros(shape, bool)
        for sb, m in zip(boxes, masks2d):
            idx = sb.index3d()
            fg2d[idx] |= m
            fg_seed[idx] |= _core(m, self.seed_erosion)
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
        for _ in range(self.refits):
            # GrabCut-like refit: object intensity from the confident 3D result, background from the rest
            sure = x > 0.8
            if sure.sum() < 10:
                break
            v = img[sure]
            mu = float(np.median(v))
            sd = max(float(1.4826 * np.median(np.abs(v - mu))), noise, 3.0)
            bgv = img[(x < 0.2) & ~bg_seed]
            model = IntensityModel(mu, sd, float(np.clip(sure.mean(), 0.2, 0.8)),
                                   background_histogram(np.concatenate([img[bg_seed], bgv])), score)
            prior = model.posterior(img, np.where(spanned, 1.0, self.outside_odds))
            w = _edge_weights(img, spacing, self.edge_scale * sd)
            x = random_walker_with_prior(w, prior, seeds, fg_seed.astype(np.float64), self.gamma, rtol=self.rtol, maxiter=self.maxiter)
            self.last_model = model
        mask = self._clean(x > self.threshold, fg_seed if fg_seed.any() else in_box, boxes[0].axis if boxes else 2)
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
