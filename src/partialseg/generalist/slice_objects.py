"""Step 3 of the random-walker generalist: the object on each prompt slice, from the prompt boxes alone.

A prompt box is the object's 2D bounding box on its slice plus some padding, so the *tight box* (box
minus padding) is what the object's own bounding box must match; an intensity band that catches
neighbours leaks out of it, one that catches only part of the object has a smaller bounding box.
Used by :class:`partialseg.generalist.random_walker.RandomWalkerGeneralist`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["SliceBox", "best_object_in_box", "find_object_on_slices"]


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


def _box_score(bb: tuple[tuple[int, int], tuple[int, int]], n_in: int, n: int, tight: tuple[slice, slice], power: float) -> float:
    """IoU(bb, tight box) * (n_in / n) * (n_in / |tight box|) ** power."""
    t0, t1 = (tight[0].start, tight[0].stop), (tight[1].start, tight[1].stop)
    tarea = (t0[1] - t0[0]) * (t1[1] - t1[0])
    a0, a1 = bb
    ix = max(0, min(a0[1], t0[1]) - max(a0[0], t0[0])) * max(0, min(a1[1], t1[1]) - max(a1[0], t1[0]))
    union = (a0[1] - a0[0]) * (a1[1] - a1[0]) + tarea - ix
    return (ix / union) * (n_in / n) * (n_in / tarea) ** power


def best_object_in_box(cand: np.ndarray, tight: tuple[slice, slice], coverage_power: float = 0.5) -> tuple[float, np.ndarray]:
    """The part of a 2D candidate mask that best fills out the tight box, and its score.

    score = IoU(bounding box of the part, tight box) x fraction of the part inside the tight box x
    (its share of the tight box)^coverage_power. The object's bounding box on a prompt slice *is*
    the tight box and the object lies inside it: a band that also catches neighbours leaks out
    (lower fraction), one that catches only part of the object has a smaller bounding box (lower
    IoU). Parts tried: each connected component, and the union of the components lying (90 %)
    inside the tight box that are not specks (an organ can cross a slice in several pieces).
    """
    lab, n = ndimage.label(cand)
    empty = np.zeros(cand.shape, bool)
    if n == 0:
        return 0.0, empty
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    inside = np.bincount(lab[tight].ravel(), minlength=n + 1)
    tarea = (tight[0].stop - tight[0].start) * (tight[1].stop - tight[1].start)
    best, best_i = 0.0, 0
    pieces = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        bb = ((sl[0].start, sl[0].stop), (sl[1].start, sl[1].stop))
        sc = _box_score(bb, int(inside[i]), int(sizes[i]), tight, coverage_power)
        if sc > best + 1e-9:
            best, best_i = sc, i
        if inside[i] >= 0.9 * sizes[i] and sizes[i] >= max(3, 0.02 * tarea):
            pieces.append((i, bb))
    out = lab == best_i if best_i else empty
    if len(pieces) > 1:
        bb = (
            (min(b[0][0] for _, b in pieces), max(b[0][1] for _, b in pieces)),
            (min(b[1][0] for _, b in pieces), max(b[1][1] for _, b in pieces)),
        )
        ids = [i for i, _ in pieces]
        n_in, n_all = int(inside[ids].sum()), int(sizes[ids].sum())
        sc = _box_score(bb, n_in, n_all, tight, coverage_power)
        if sc > best + 1e-9:
            best, out = sc, np.isin(lab, ids)
    return best, out


def find_object_on_slices(
    img: np.ndarray,
    boxes: Sequence[SliceBox],
    noise: float,
    bands: Sequence[float] = (1.5, 2.5, 3.5),
    opening: bool = True,
    coverage_power: float = 0.0,
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
                band = np.abs(p - mu) <= half
                best_sc, best_m = 0.0, np.zeros(p.shape, bool)
                # as thresholded, and opened (cuts thin bridges to neighbours of the same intensity)
                for cand in (band, ndimage.binary_opening(band)) if opening else (band,):
                    sc, m = best_object_in_box(cand, sb.tight, coverage_power)
                    if sc > best_sc + 1e-3:
                        best_sc, best_m = sc, m
                total += best_sc
                masks.append(best_m)
            total /= len(planes)
            if total > best[0] + 1e-3:
                best = (total, masks)
    return best[1], max(best[0], 0.0)
