"""Body outline, subcutaneous fat, muscle wall, patient table, diaphragm, lungs and heart."""

from __future__ import annotations

import numpy as np

from partialseg.synthetic.anatomy.builder import Builder
from partialseg.synthetic.grid import smoothstep
from partialseg.synthetic.shapes import eval_blob
from partialseg.synthetic.tissues import T


def paint_body(b: Builder) -> None:
    """Body outline, subcutaneous fat, muscle wall and cavity; the patient table; diaphragm, lungs and heart."""
    g, c, rng, s = b.grid, b.c, b.rng, b.scale
    zt = b.zt
    hip = np.exp(-(((zt + 150.0) / 45.0) ** 2))
    pelvis = smoothstep(-zt, 40.0, 130.0)  # 0 in the abdomen, 1 deep in the pelvis
    belly = np.exp(-(((zt + 20.0) / 70.0) ** 2))
    chest = smoothstep(zt, 60.0, 150.0)
    t = b.t_sub
    t_lat = t * rng.uniform(0.6, 1.0)
    t_ant = t * rng.uniform(1.0, 1.5) * (1.0 + 0.3 * belly)
    t_post = t * rng.uniform(0.9, 1.3) * (1.0 + 0.4 * hip)
    # cavity: half-width, front and back (template y, relative to the spine centre)
    a_cav = 132.0 + 0.6 * b.visceral - 70.0 * pelvis + 5.0 * chest
    y_cf = 120.0 + b.visceral * (0.6 + 0.4 * belly) - 25.0 * pelvis - 10.0 * chest
    y_cb = -45.0 + 10.0 * pelvis - 10.0 * smoothstep(-zt, 80.0, 120.0) * (1 - smoothstep(-zt, 150.0, 185.0))
    # muscle wall outer surface (fat inner surface)
    a_mus = np.maximum(a_cav + 14.0, 150.0 + 22.0 * hip + 8.0 * pelvis)
    y_mf = y_cf + 10.0
    y_mb = -80.0 - 30.0 * hip - 10.0 * pelvis
    b.cav_profile = (a_cav, y_cf, y_cb)
    X = g.axes[0][:, None, None] - np.float32(b.x0)
    Y = g.axes[1][None, :, None] - np.float32(b.yv)

    def inside(a: np.ndarray, yf: np.ndarray, yb: np.ndarray, ex: float, ef: float, eb: float) -> np.ndarray:
        yc = yb + 0.5 * (yf - yb)
        a, yf_, yb_, yc_ = (np.asarray(v, np.float32)[None, None, :] for v in (a, yf, yb, yc))
        u = np.abs(X / a) ** ex  # (nx, 1, nz)
        front = Y >= yc_
        v = np.where(front, np.abs((Y - yc_) / (yf_ - yc_)) ** ef, np.abs((Y - yc_) / (yc_ - yb_)) ** eb)  # (1, ny, nz)
        out = np.empty(g.shape, bool)
        step = max(1, (1 << 18) // (g.shape[1] * g.shape[2]))
        for i in range(0, g.shape[0], step):  # (u + v) < 1 slab by slab: no full-volume float temporary
            np.less(u[i : i + step] + v, 1.0, out=out[i : i + step])
        return out

    skin = inside(a_mus * s + t_lat, y_mf * s + t_ant, y_mb * s - t_post, 2.2, 2.0, 3.2)
    fat_in = inside(a_mus * s, y_mf * s, y_mb * s, 2.3, 2.0, 3.2)
    cav = inside(a_cav * s, y_cf * s, y_cb * s, 2.4, 2.2, 3.0)
    np.copyto(c.tissue, T["fat"], where=skin)
    np.copyto(c.tissue, T["muscle"], where=fat_in)
    np.copyto(c.tissue, T["visceral_fat"], where=cav)
    # intermuscular fat planes
    step = max(1, (1 << 18) // (g.shape[1] * g.shape[2]))
    for i in range(0, g.shape[0], step):
        sl = slice(i, i + step)
        np.copyto(c.tissue[sl], T["fat"], where=fat_in[sl] & ~cav[sl] & (b.fine[sl] > 1.9))
    b.cav = cav
    b.skin = skin
    # patient table: a curved carbon plate under the back
    yb_min = float(np.min(y_mb * s - t_post)) + b.yv - 8.0
    Yw = g.axes[1][None, :, None]
    Xw = g.axes[0][:, None, None]
    ytab = yb_min - 0.0009 * (Xw - b.x0) ** 2
    table = (Yw < ytab) & (Yw > ytab - 4.0) & (np.abs(Xw - b.x0) < 220)
    np.copyto(c.tissue, T["table"], where=table)

    # diaphragm: two domes, the right one higher; lung above, abdomen below
    zR, zL, k = b.zR, b.zL, b.dome_k
    xs = (g.axes[0].astype(np.float64) - b.x0)[:, None] / s
    ys = (g.axes[1].astype(np.float64) - b.yv)[None, :] / s

    def dome(xc: float, yc: float, top: float) -> np.ndarray:
        # flat-topped: the organs fill the dome, the periphery drops steeply into the recesses
        dyy = ys - yc
        byy = np.where(dyy >= 0, 160.0, 100.0)
        r2 = ((xs - xc) / 105.0) ** 2 + (dyy / byy) ** 2
        return top - k * (0.3 * r2 + 0.7 * r2**3)

    zd_t = np.maximum(dome(55.0, 40.0, zR), dome(-55.0, 35.0, zL))  # template mm, (nx, ny)
    zd = (b.z0 + s * zd_t).astype(np.float32)[:, :, None]
    thick = 5.0 * s
    # the muscle sheet is thicker in z where the dome slopes
    gx, gy = np.gradient(zd[:, :, 0], g.spacing[0], g.spacing[1])
    slope = np.sqrt(1.0 + gx**2 + gy**2).astype(np.float32)[:, :, None]
    lower = zd - thick * slope
    # everything below runs on the slices that reach the diaphragm (nothing below them is above it)
    zs = slice(max(0, int(np.searchsorted(g.axes[2], min(float(lower.min()), float(zd.min())))) - 1), None)
    Z = g.axes[2][None, None, zs]
    above = Z > zd
    cav_s = cav[:, :, zs]
    diaphragm = cav_s & ~above & (Z > lower)
    thorax = cav_s & above
    # the heart rests on the central tendon, between the domes
    z_tendon = float(zd_t[np.argmin(np.abs(xs[:, 0])), np.argmin(np.abs(ys[0] - 40.0))])
    heart_b = b.blob(b.W(-15.0, 80.0, z_tendon + 45.0), (80, 60, 65), deform=0.5)
    got = eval_blob(g, heart_b)
    heart = np.zeros(thorax.shape, bool)
    if got is not None:
        sl, f = got
        lo = max(sl[2].start, zs.start)  # the blob's slices within the slab
        if sl[2].stop > lo:
            heart[sl[0], sl[1], lo - zs.start : sl[2].stop - zs.start] = f[:, :, lo - sl[2].start :] < 1.0
    mediastinum = (np.abs(Xw - b.x0) < 30 * s) & (Yw > b.yv + 10 * s)
    tissue_s = c.tissue[:, :, zs]
    np.copyto(tissue_s, T["lung"], where=thorax & ~heart & ~mediastinum)
    np.copyto(tissue_s, T["heart"], where=thorax & heart)
    np.copyto(tissue_s, T["muscle"], where=diaphragm)
    b.abdomen = cav.copy()
    b.abdomen[:, :, zs] &= ~above & ~diaphragm
    b.organ_ok = b.abdomen.copy()
