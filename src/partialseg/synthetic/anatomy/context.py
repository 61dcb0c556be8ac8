"""Unlabelled soft-tissue context painted before the organs: muscles, bowel, iliac and renal vessels."""

from __future__ import annotations

import numpy as np

from partialseg.synthetic.anatomy.builder import Builder
from partialseg.synthetic.shapes import raster_tubes
from partialseg.synthetic.tissues import T


def paint_muscles(b: Builder) -> None:
    """Psoas, diaphragmatic crura, quadratus lumborum and obturator internus (unlabelled muscle)."""
    z0, _ = b.vertebra_z
    tubes = []
    for side in (1, -1):
        ps = b.size(0.5)
        psoas = [(side * 24, 4, 95), (side * 34, 4, 40), (side * 44, 8, -10), (side * 56, 18, z0 - 10), (side * 72, 40, z0 - 50),
                 (side * 80, 62, z0 - 80), (side * 84, 72, z0 - 125)]
        tubes.append(b.tube(b.Wn(psoas, jitter=2.0), np.array([5, 11, 17, 21, 22, 19, 17]) * ps, wobble=0.05))
        crus = [(side * 14 - 4, 26, 175), (side * 14 - 3, 24, 120), (side * 15 - 2, 20, 70), (side * 10, 14, 30)]
        tubes.append(b.tube(b.Wn(crus, jitter=1.5), [5.5 + 1.5 * (side > 0), 6, 5.5, 3.5]))
        ql = [(side * 55, -35, 100), (side * 62, -36, 40), (side * 70, -38, -20), (side * 80, -30, z0 - 30)]
        tubes.append(b.tube(b.Wn(ql, jitter=2.0), [6, 11, 14, 8]))
        # obturator internus lines the lateral wall of the true pelvis
        obt = [(side * 62, 55, z0 - 90), (side * 64, 45, z0 - 115), (side * 60, 40, z0 - 145)]
        tubes.append(b.tube(b.Wn(obt, jitter=1.5), [7, 10, 8]))
    for tube in tubes:  # one box per muscle: far smaller than their union
        tf = raster_tubes(b.grid, [tube])
        if tf is not None:
            m = (tf.rho < 1.0) & ~b.c.bone[tf.sl] & (b.c.tissue[tf.sl] != T["lung"])
            b.c.paint(tf.sl, m, T["muscle"], 0)
            b.organ_ok[tf.sl] &= ~m  # solid organs push against muscles, not into them

def paint_bowel(b: Builder) -> None:
    """Colon and a space-filling small bowel with segment-wise contents (unlabelled)."""
    rng = b.rng
    z0, _ = b.vertebra_z
    # colon: caecum, ascending, hepatic flexure, transverse (sags), splenic flexure, descending, sigmoid, rectum
    sag = rng.uniform(0.0, 45.0)
    colon = [(68, 55, -70), (85, 35, -35), (90, 30, 0), (82, 55, 30), (40, 105, 18 - sag * 0.6), (0, 112, 12 - sag),
             (-40, 105, 20 - sag * 0.6), (-82, 58, 62), (-95, 28, 25), (-92, 30, -35), (-65, 45, z0 - 30),
             (-25, 70, z0 - 45), (10, 45, z0 - 50), (0, 10, z0 - 70), (0, 5, z0 - 105), (0, 12, z0 - 140)]
    rcol = [26, 22, 21, 20, 19, 19, 19, 19, 17, 16, 15, 15, 15, 17, 17, 12]
    ctube = b.tube(b.Wn(colon, jitter=5.0), np.array(rcol) * rng.uniform(0.8, 1.15), wobble=0.12)
    # small bowel: a space-filling walk from the duodenojejunal flexure to the caecum; jejunum in the
    # left upper and mid abdomen, ileum right and low, the last loops in the pelvis
    n = 32
    pts: list[np.ndarray] = []
    regions = [((-55, 65, 20), (40, 40, 35)), ((0, 70, -30), (75, 40, 50)), ((0, 75, z0 - 40), (55, 30, 30))]
    for i in range(n):
        (cx, cy, cz), (ax, ay, az) = regions[0 if i < 10 else 1 if i < 26 else 2]
        for _ in range(40):  # keep loops apart so that mesenteric fat shows between them
            u = rng.uniform(-1, 1, 3)
            if (u**2).sum() > 1:
                continue
            p = np.array([cx + ax * u[0], cy + ay * u[1], cz + az * u[2]])
            if all(np.linalg.norm(p - q) > 30.0 for q in pts):
                break
        pts.append(p)
    start = np.array([-30.0, 62.0, 25.0])
    order, left, cur = [], list(range(n)), start
    while left:
        j = left.pop(int(np.argmin([np.linalg.norm(pts[j] - cur) for j in left])))
        order.append(pts[j])
        cur = pts[j]
    sb_ctrl = np.array([start, *order, (60.0, 50.0, -75.0)])
    sb = b.tube(b.Wn(sb_ctrl), np.full(len(sb_ctrl), 10.5) * rng.uniform(0.85, 1.15), wobble=0.15)
    tf = raster_tubes(b.grid, [ctube, sb])
    if tf is None:
        return
    sl = tf.sl
    m = (tf.rho < 1.0) & (b.c.tissue[sl] == T["visceral_fat"]) & b.cav[sl]
    # contents change segment by segment: fluid, chyme, collapsed, gas (anterior: the patient is supine)
    nseg = 16
    kinds_sb = rng.choice(4, nseg, p=[0.4, 0.25, 0.2, 0.15])
    level_sb = np.where(kinds_sb == 3, rng.uniform(-0.6, 0.3, nseg), rng.uniform(0.5, 1.5, nseg))
    level_co = rng.uniform(-0.4, 1.2, nseg)
    if not m.any():
        return
    # only the painted voxels need their contents: work on them alone (a fifth of the box or less)
    seg = np.minimum((tf.s[m] * nseg).astype(np.int64), nseg - 1)
    is_colon = tf.tube[m] == 0
    level = np.where(is_colon, level_co[seg], level_sb[seg])
    kind = kinds_sb[seg]
    t = np.full(seg.shape, T["gi_fluid"], np.uint8)
    t[~is_colon & (kind == 1)] = T["chyme"]
    t[~is_colon & (kind == 2)] = T["gi_wall"]
    t[is_colon] = T["stool"]
    t[is_colon & (b.fine[sl][m] > 1.1)] = T["gas"]
    t[tf.dy[m] > level] = T["gas"]
    t[tf.rho[m] > 1.0 - 2.5 / np.maximum(tf.radius[m], 1.0)] = T["gi_wall"]
    b.c.tissue[sl][m] = t
    b.c.label[sl][m] = 0


def paint_vessels(b: Builder) -> None:
    """Iliac arteries and veins, renal veins: unlabelled, painted before the organs."""
    z0, _ = b.vertebra_z
    art, ven = [], []
    for side in (1, -1):
        art.append(b.tube(b.Wn([(-3, 30, -30), (side * 22, 28, z0 - 15), (side * 45, 30, z0 - 50),
                                      (side * 62, 45, z0 - 85), (side * 75, 70, z0 - 125)]), [7.5, 7, 6.5, 6, 6]))
        ven.append(b.tube(b.Wn([(10, 26, -42), (side * 20 + 5, 20, z0 - 20), (side * 42, 20, z0 - 55),
                                      (side * 58, 32, z0 - 92), (side * 70, 58, z0 - 130)]), [9, 8.5, 8, 7.5, 7]))
    for tubes, tissue in ((art, T["artery"]), (ven, T["vein"])):
        tf = raster_tubes(b.grid, tubes)
        if tf is not None:
            m = (tf.rho < 1.0) & b.cav[tf.sl] & ~b.c.bone[tf.sl]
            b.c.paint(tf.sl, m, tissue, 0)
