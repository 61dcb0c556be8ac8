"""HD95 speed: partialseg.evaluation against MONAI's HausdorffDistanceMetric(percentile=95).

Run: ``python benchmarks/hd95_speed.py [--repeats 5] [--seed 0]``

Cases (all at anisotropic spacing, volume 160×160×96 voxels):

- ``labelmap-6``: a 6-class label map of organ-like blobs (liver, stomach, spleen, two
  kidneys, pancreas) and a prediction made by shifting, eroding/dilating and speckling it;
  ours evaluates all classes from the label maps with ``label_map_metrics``, MONAI gets the
  one-hot tensors (built outside the timed region, which favours MONAI).
- ``small`` / ``medium`` / ``large``: single organ-sized blobs (adrenal, kidney, liver sizes)
  and a perturbed copy, as boolean masks; ours is ``hd95``, MONAI the metric on (1, 1, ...) tensors.

Prints the median time of each implementation per case, the ratio MONAI/ours, and asserts
that the values agree (float32 round-off only).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage

from partialseg.evaluation.metrics import hd95, label_map_metrics

SHAPE = (160, 160, 96)
SPACING = (0.8, 1.3, 3.0)

# (name, centre as a fraction of SHAPE, semi-axes in mm)
ORGANS = (
    ("liver", (0.30, 0.40, 0.55), (55.0, 60.0, 75.0)),
    ("stomach", (0.70, 0.35, 0.60), (35.0, 40.0, 50.0)),
    ("spleen", (0.80, 0.65, 0.55), (20.0, 30.0, 40.0)),
    ("kidney_right", (0.25, 0.75, 0.45), (18.0, 22.0, 40.0)),
    ("kidney_left", (0.75, 0.80, 0.45), (18.0, 22.0, 40.0)),
    ("pancreas", (0.50, 0.55, 0.50), (30.0, 8.0, 12.0)),
)

BLOBS = (("small", (6.0, 6.0, 12.0)), ("medium", (20.0, 25.0, 45.0)), ("large", (60.0, 65.0, 90.0)))


def organ_blob(rng: np.random.Generator, centre_frac, semi_axes_mm, shape=SHAPE, spacing=SPACING) -> np.ndarray:
    """An ellipsoid in mm with a smoothly noisy boundary (so surfaces are not analytic)."""
    grids = np.meshgrid(*[(np.arange(n) - f * n) * s for n, f, s in zip(shape, centre_frac, spacing)], indexing="ij")
    r = sum((g / a) ** 2 for g, a in zip(grids, semi_axes_mm))
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma=4)
    return r + 2.0 * noise / (noise.std() + 1e-9) * 0.15 < 1.0


def perturb(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """A plausible prediction: shift by a voxel or two, erode or dilate, add a stray speckle."""
    out = np.roll(mask, tuple(int(v) for v in rng.integers(-2, 3, size=3)), axis=(0, 1, 2))
    out = ndimage.binary_dilation(out) if rng.random() < 0.5 else ndimage.binary_erosion(out)
    if out.any():
        zz = [int(rng.integers(0, s - 3)) for s in mask.shape]
        out[zz[0] : zz[0] + 3, zz[1] : zz[1] + 3, zz[2] : zz[2] + 2] = True
    return out


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def monai_hd95(onehot_pred: torch.Tensor, onehot_ref: torch.Tensor, include_background: bool) -> np.ndarray:
    from monai.metrics import HausdorffDistanceMetric

    metric = HausdorffDistanceMetric(percentile=95, include_background=include_background, reduction="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(onehot_pred, onehot_ref, spacing=list(SPACING))[0].numpy().astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for MONAI (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    import monai.metrics  # noqa: F401  (import cost outside the timings)

    rows = []
    # ---- 6-class label map -------------------------------------------------------------
    ref = np.zeros(SHAPE, np.int16)
    pred = np.zeros(SHAPE, np.int16)
    for c, (_, centre, axes) in enumerate(ORGANS, start=1):
        m = organ_blob(rng, centre, axes)
        ref[m] = c
        pred[perturb(rng, m)] = c
    n = len(ORGANS)
    classes = range(1, n + 1)
    oh_pred = torch.from_numpy(np.stack([pred == c for c in range(n + 1)])[None]).float()
    oh_ref = torch.from_numpy(np.stack([ref == c for c in range(n + 1)])[None]).float()
    t_ours, ours = median_time(lambda: label_map_metrics(pred, ref, classes, SPACING), args.repeats)
    t_monai, theirs = median_time(lambda: monai_hd95(oh_pred, oh_ref, False), args.repeats)
    ours_v = np.array([ours[c].hd95 for c in classes])  # type: ignore[index]
    np.testing.assert_allclose(ours_v, theirs, rtol=1e-5, atol=1e-4)
    sizes = ", ".join(f"{name} {int((ref == c).sum())}" for c, (name, _, _) in enumerate(ORGANS, start=1))
    rows.append(("labelmap-6", t_ours, t_monai, f"voxels: {sizes}"))

    # ---- single organ-sized blobs ------------------------------------------------------
    for name, axes in BLOBS:
        r = organ_blob(rng, (0.5, 0.5, 0.5), axes)
        p = perturb(rng, r)
        tp, tr = torch.from_numpy(p[None, None]).float(), torch.from_numpy(r[None, None]).float()
        t_ours, ours_b = median_time(lambda: hd95(p, r, SPACING), args.repeats)
        t_monai, theirs_b = median_time(lambda: monai_hd95(tp, tr, True), args.repeats)
        np.testing.assert_allclose(ours_b, theirs_b[0], rtol=1e-5, atol=1e-4)
        rows.append((name, t_ours, t_monai, f"{int(r.sum())} voxels, HD95 {ours_b:.2f} mm"))

    print(f"volume {SHAPE} at spacing {SPACING} mm, median of {args.repeats}, torch threads {torch.get_num_threads()}")
    print(f"{'case':<12} {'ours (s)':>9} {'MONAI (s)':>10} {'MONAI/ours':>11}  notes")
    for case, to, tm, note in rows:
        print(f"{case:<12} {to:9.4f} {tm:10.4f} {tm / to:10.1f}x  {note}")
    print("values agree (rtol 1e-5, atol 1e-4 mm)")


if __name__ == "__main__":
    main()
