"""Spine (vertebrae, discs, canal), ribs and costal cartilage, pelvis and femoral heads."""

from __future__ import annotations

import math

import numpy as np

from partialseg.synthetic.anatomy.builder import Builder
from partialseg.synthetic.shapes import Blob, eval_blob, frame, make_tube, raster_tubes
from partialseg.synthetic.tissues import T


def paint_spine(b: Builder) -> None:
    """Vertebral bodies from L5 up, discs, posterior arches and processes, the spinal canal (CSF)."""
    s = b.scale
    period = b.spine_period
    canal_ctrl, canal_r = [], []
    # vertebral levels from L5 (its body centre at about -55) upward
    z = b.l5_z
    level = 0
    b.vertebrae = []  # template z of each body centre, L5 first
    while z < 380.0:
        lumbar = level < 5
        y = b.spine_y(z)
        h = period * (0.72 if lumbar else 0.74)
        rx, ry = (24.0, 18.0) if lumbar else (19.0, 16.0)
        rx, ry = rx * (1 + 0.03 * level if lumbar else 0.95), ry
        body = Blob(b.W(0, y, z), np.array([rx, ry, h / 2]) * s, np.eye(3), 3.0)
        b.paint_bone(body, 0.86)
        # intervertebral disc above this body
        disc = Blob(b.W(0, y, z + period / 2), np.array([rx * 0.95, ry * 0.95, (period - h) / 2 + 1.0]) * s, np.eye(3), 3.0)
        got = eval_blob(b.grid, disc)
        if got is not None:
            sl, f = got
            m = (f < 1.0) & ~b.c.bone[sl]
            b.c.paint(sl, m, T["disc"], 0)
            b.c.bone[sl] |= m
        # posterior arch: lamina ring around the canal, spinous and transverse processes
        yc = y - ry - 12.0
        ring = Blob(b.W(0, yc, z + 2), np.array([17.0, 14.0, h * 0.42]) * s, np.eye(3), 2.5)
        gr = eval_blob(b.grid, ring)
        if gr is not None:
            sl, f = gr
            m = f < 1.0
            # the canal is cut out of the ring: evaluate it on the ring's box
            cc = b.W(0, yc + 1.5, z + 2)
            X, Y, Z = (b.grid.axes[a][sl[a]] for a in range(3))
            inner = ((X[:, None, None] - cc[0]) / (10.5 * s)) ** 2 + ((Y[None, :, None] - cc[1]) / (8.5 * s)) ** 2 < 1.0
            m &= ~inner
            t = np.where(f > 0.75, T["bone_cortical"], T["bone_cancellous"]).astype(np.uint8)
            b.c.paint(sl, m, t, 0)
            b.c.bone[sl] |= m
        sp = Blob(b.W(0, yc - 25.0, z - 4.0), np.array([5.0, 20.0, 9.0]) * s,
                   frame((0, 0.35, 1.0), (1, 0, 0)), 2.2)
        b.paint_bone(sp, 0.7)
        if lumbar:
            for side in (1, -1):
                tp = Blob(b.W(side * 34.0, yc + 8.0, z + 1.0), np.array([20.0, 5.5, 6.0]) * s, np.eye(3), 2.2)
                b.paint_bone(tp, 0.7)
        canal_ctrl.append((0.0, yc + 1.5, z))
        canal_r.append(9.0)
        b.vertebrae.append(z)
        z += period if level < 4 else 0.87 * period  # thoracic levels are shorter
        level += 1
    b.vertebra_z = (b.l5_z, period)
    canal = b.tube(b.Wn(canal_ctrl), canal_r)
    tf = raster_tubes(b.grid, [canal])
    if tf is not None:
        m = (tf.rho < 1.0) & ~b.c.bone[tf.sl]
        b.c.paint(tf.sl, m, T["csf"], 0)

def paint_ribs(b: Builder) -> None:
    """Ribs 6 to 12 on both sides from their vertebrae round the cavity, costal cartilage to the xiphoid."""
    rng, s, g = b.rng, b.scale, b.grid
    a_cav, y_cf, _ = b.cav_profile
    tubes, cart = [], []
    for side in (1, -1):
        for k in range(7):  # ribs 12 (k=0) up to 6
            zr = b.vertebrae[5 + k] + rng.normal(0, 3.0)  # rib head at its thoracic vertebra
            zi = int(np.clip(np.searchsorted(b.zt, zr), 0, len(b.zt) - 1))
            a = float(a_cav[zi]) + 6.0
            yf, yb = float(y_cf[zi]) + 4.0, -40.0
            yc = 0.5 * (yf + yb)
            # floating ribs are short; higher ribs reach round to the costal margin
            reach = [0.30, 0.50, 0.72, 0.80, 0.85, 0.88, 0.90][k]
            drop = [30.0, 65.0, 120.0, 135.0, 140.0, 135.0, 125.0][k] * rng.uniform(0.9, 1.1)
            th = np.linspace(-0.5 * np.pi - 0.28, -0.5 * np.pi + reach * np.pi, 9)
            pts = []
            for i, ang in enumerate(th):
                frac = i / (len(th) - 1)
                x = side * a * math.cos(ang) * (0.45 if i == 0 else 1.0)
                yy = yc + (yf - yc if math.sin(ang) > 0 else yc - yb) * math.sin(ang)
                x = side * max(abs(x), 28.0 + 10.0 * frac)
                pts.append((x, yy, zr - drop * frac**1.6))
            pts = b.Wn(pts, jitter=1.5)
            tubes.append(make_tube(pts, [4.5 * s] * len(pts), b.step))
            if k >= 3:  # costal cartilage climbs from the rib end to the xiphoid: the costal margin
                end = pts[-1]
                mid = b.W(side * 30.0, yf - 2.0, zr - drop + 15.0)
                tip = b.W(side * 8.0, yf - 2.0, zr - drop + 35.0)
                cart.append(make_tube(np.array([end, 0.5 * (end + mid), mid, tip]), [4.0 * s] * 4, b.step))
    tf = raster_tubes(g, tubes)
    if tf is not None:
        m = (tf.rho < 1.0) & (b.c.tissue[tf.sl] != T["lung"])
        t = np.where(tf.rho > 0.6, T["bone_cortical"], T["bone_cancellous"]).astype(np.uint8)
        b.c.paint(tf.sl, m, t, 0)
        b.c.bone[tf.sl] |= m
    tf = raster_tubes(g, cart)
    if tf is not None:
        m = (tf.rho < 1.0) & ~b.abdomen[tf.sl]
        b.c.paint(tf.sl, m, T["cartilage"], 0)
        b.c.bone[tf.sl] |= m

def paint_pelvis(b: Builder) -> None:
    """Sacrum, iliac wings, acetabula, femoral heads and necks, ischia, pubic rami."""
    s = b.scale
    rng = b.rng
    z0, _ = b.vertebra_z
    # sacrum: a curved plate, wide at the top, down to the coccyx
    sac = [((0, -8, z0 - 25), (48, 18, 16)), ((0, -22, z0 - 55), (42, 15, 16)), ((0, -38, z0 - 85), (30, 12, 15)),
           ((0, -45, z0 - 110), (18, 9, 14)), ((0, -38, z0 - 132), (9, 7, 12))]
    for i, (p, semi) in enumerate(sac):
        tilt = frame((0, 0.35 + 0.15 * i, 1.0), (1, 0, 0))
        b.paint_bone(Blob(b.W(*p), np.array(semi) * s, tilt, 2.6), 0.8)
    wide = rng.uniform(0.93, 1.07)
    for side in (1, -1):
        # iliac wing: a thin fan whose horizontal extent runs from the sacroiliac joint forward and out
        h = np.array([side * 0.55, 0.84, 0.0])
        v = np.array([side * 0.35, 0.0, 1.0])
        rot = frame(v, np.cross(h, v))
        b.paint_bone(Blob(b.W(side * 85.0 * wide, 0.0, z0 - 22.0), np.array([6.0, 50.0, 44.0]) * s, rot, 2.2), 0.6)
        # body of the ilium, acetabulum, femoral head, neck and greater trochanter, ischium
        b.paint_bone(Blob(b.W(side * 76.0 * wide, 20.0, z0 - 62.0), np.array([13.0, 24.0, 24.0]) * s,
                               frame((side * 0.3, 0.3, 1.0), (1, 0, 0)), 2.2), 0.7)
        b.paint_bone(Blob(b.W(side * 88.0 * wide, 38.0, z0 - 82.0), np.array([20.0, 26.0, 16.0]) * s, np.eye(3), 2.4), 0.75)
        b.paint_bone(Blob(b.W(side * 92.0 * wide, 42.0, z0 - 97.0), np.array([23.0, 23.0, 23.0]) * s, np.eye(3), 2.0), 0.85)
        neck = frame((side * 1.0, -0.15, -0.55), (0, 1, 0))
        b.paint_bone(Blob(b.W(side * 118.0 * wide, 36.0, z0 - 112.0), np.array([15.0, 17.0, 30.0]) * s, neck, 2.2), 0.8)
        b.paint_bone(Blob(b.W(side * 72.0 * wide, 18.0, z0 - 118.0), np.array([12.0, 18.0, 24.0]) * s, np.eye(3), 2.2), 0.75)
        # superior pubic ramus to the symphysis
        ramus = b.Wn([(side * 80.0 * wide, 62.0, z0 - 92.0), (side * 45.0, 85.0, z0 - 100.0), (side * 8.0, 98.0, z0 - 106.0)])
        tf = raster_tubes(b.grid, [make_tube(ramus, [9.0 * s, 8.5 * s, 9.0 * s], b.step)])
        if tf is not None:
            m = tf.rho < 1.0
            t = np.where(tf.rho > 0.7, T["bone_cortical"], T["bone_cancellous"]).astype(np.uint8)
            b.c.paint(tf.sl, m, t, 0)
            b.c.bone[tf.sl] |= m
