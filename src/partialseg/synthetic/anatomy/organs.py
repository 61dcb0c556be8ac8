"""The 15 labelled AMOS organs and the unlabelled vessels and pelvic structures between them."""

from __future__ import annotations

from typing import Any

import numpy as np

from partialseg.synthetic.anatomy.builder import Builder
from partialseg.synthetic.grid import BoxMask
from partialseg.synthetic.shapes import eval_blob, frame, raster_tubes
from partialseg.synthetic.tissues import L, T


def paint_organs(b: Builder) -> None:
    """The labelled organs, each indenting what was painted before it, and the unlabelled vessels among them."""
    rng, s, g, c = b.rng, b.scale, b.grid, b.c
    z0, _ = b.vertebra_z
    ok = b.organ_ok  # abdomen below the diaphragm, outside muscles
    # outside bone, and in the cavity outside bone (nothing paints bone from here on), per box as needed
    notbone = BoxMask(lambda sl: ~c.bone[sl])
    cav_nb = BoxMask(lambda sl: b.cav[sl] & ~c.bone[sl])

    def put(got: Any, label: int, tissue: int | np.ndarray, allowed: np.ndarray | BoxMask | None = None, thr: float = 1.0) -> None:
        if got is None:
            return
        sl, f = got
        al = ok if allowed is None else allowed
        c.paint(sl, (f < thr) & notbone[sl], tissue, label, al)

    off_liver = b.offset()
    off_kr, off_kl = b.offset(), b.offset()
    off_pd = b.offset(0.7)
    off_st = b.offset()
    off_sp = b.offset()
    off_pel = b.offset(0.8)

    # liver: right lobe, left lobe, caudate, inferior right tip; the dome is cut by the diaphragm
    ls = b.size()
    lobes = [
        ((64, 32, 92), (71, 77, 62), 2.3),
        ((-5, 88, 110), (52 * b.size(0.7), 25, 29), 2.2),
        ((14, 44, 100), (20, 18, 30), 2.0),
        ((86, 38, 45), (27, 38, 29 * b.size()), 2.2),
    ]
    parts = []
    for (p, semi, e) in lobes:
        rot = frame((0, 0.15 if p[0] > 0 else -0.2, 1.0), (1, 0, 0.1 if p[0] < 20 else 0))
        got = eval_blob(g, b.blob(b.W(*p, off_liver), np.array(semi) * ls, rot, e))
        if got is not None:
            parts.append(got)
    if parts:  # the union of the lobes, on the box that holds them all
        box = tuple(slice(min(sl[a].start for sl, _ in parts), max(sl[a].stop for sl, _ in parts)) for a in range(3))
        liver = np.zeros(tuple(x.stop - x.start for x in box), bool)
        for sl, f in parts:
            liver[tuple(slice(x.start - o.start, x.stop - o.start) for x, o in zip(sl, box))] |= f < 1.0
        liver &= ok[box] & notbone[box]
        c.paint(box, liver, T["liver"], L["liver"])

    # spleen: crescent along the left posterolateral ribs
    ss = b.size(1.3)
    put(eval_blob(g, b.blob(b.W(-90, 2, 98, off_sp), np.array([26, 58, 46]) * ss, frame((0.25, -0.5, 0.85), (-0.9, -0.4, 0)),
                                2.2, bend=0.35)), L["spleen"], T["spleen"])

    # stomach: fundus under the left dome, body, antrum across to the pylorus; air-fluid level anteriorly
    st = b.size(1.5)
    stom = [(-62, 45, 128), (-55, 66, 106), (-55, 90, 76), (-40, 104, 52), (-5, 104, 42), (20, 90, 46), (32, 76, 52)]
    srad = np.array([28, 27, 25, 21, 16, 12, 9]) * st
    stube = b.tube(b.Wn(stom, off_st, jitter=3.0), srad, wobble=0.08)
    b.pylorus = stube.points[-1]
    tf = raster_tubes(g, [stube])
    if tf is not None:
        m = tf.rho < 1.0
        level = rng.uniform(-0.1, 1.1)
        food = rng.random() < 0.35
        t = np.full(m.shape, T["gi_fluid"], np.uint8)
        if food:
            t[b.fine[tf.sl] > 0.3] = T["gi_wall"]
        t[tf.dy > level] = T["gas"]
        t[tf.rho > 1.0 - 5.0 / np.maximum(tf.radius, 1.0)] = T["gi_wall"]
        c.paint(tf.sl, m & notbone[tf.sl], t, L["stomach"], ok)

    # duodenum: C-loop from the pylorus around the pancreatic head to the duodenojejunal flexure
    du = [(32, 76, 52), (50, 62, 58), (62, 46, 52), (66, 42, 32), (63, 42, 8), (50, 50, -8), (20, 56, -13),
          (-10, 56, -10), (-28, 58, 3), (-32, 62, 22)]
    dtube = b.tube(b.Wn(du, off_pd, jitter=2.5), np.full(len(du), 11.5) * b.size(0.8), wobble=0.15)
    dtube.points[0] = b.pylorus
    tf = raster_tubes(g, [dtube])
    if tf is not None:
        m = tf.rho < 1.0
        level = rng.uniform(0.2, 1.3)
        t = np.full(m.shape, T["gi_fluid"], np.uint8)
        t[np.sin(2 * np.pi * rng.uniform(2, 5) * tf.s + rng.uniform(0, 6.3)) > 0.4] = T["gi_wall"]  # collapsed stretches
        t[tf.dy > level] = T["gas"]
        t[tf.rho > 1.0 - 2.5 / np.maximum(tf.radius, 1.0)] = T["gi_wall"]
        c.paint(tf.sl, m & notbone[tf.sl], t, L["duodenum"], ok)

    # pancreas: uncinate, head in the C-loop, neck, body over the aorta, tail to the splenic hilum
    pz = b.size()
    pan = [(18, 44, 12), (38, 54, 28), (30, 68, 42), (10, 76, 48), (-15, 72, 53), (-40, 60, 59), (-62, 46, 66), (-80, 32, 73)]
    prad = np.array([8, 15, 12, 9, 10.5, 10, 9, 8]) * pz
    ptube = b.tube(b.Wn(pan, off_pd, jitter=2.0), prad, wobble=0.15)
    tf = raster_tubes(g, [ptube], squash_y=1.25)
    if tf is not None:
        m = tf.rho < 1.0
        fatty = rng.uniform(-0.2, 1.2)  # fatty lobulation: interdigitated fat stays labelled pancreas
        t = np.where(b.fine[tf.sl] > 2.2 - fatty, T["visceral_fat"], T["pancreas"]).astype(np.uint8)
        c.paint(tf.sl, m & notbone[tf.sl], t, L["pancreas"], ok)

    # kidneys: bean shaped, upper pole medial and posterior, hilum anteromedial; right lower than left
    b.kidney_top = {}
    kz_both = b.size(0.8)
    for side, lab, off in ((1, L["kidney_right"], off_kr), (-1, L["kidney_left"], off_kl)):
        kz = kz_both * b.size(0.5)
        zc = 38.0 if side > 0 else 50.0
        ctr = b.W(side * 64.0, -4.0, zc, off)
        axis = np.array([-side * 0.2, -0.25, 1.0])
        rot = frame(axis, (-side * 0.8, 0.6, 0.0))
        semi = np.array([27.0, 23.0, 55.0]) * kz
        got = eval_blob(g, b.blob(ctr, semi, rot, 2.1))
        if got is not None:
            sl, f = got
            X, Y, Z = (g.axes[a][sl[a]] for a in range(3))
            d = np.stack(np.broadcast_arrays(X[:, None, None] - ctr[0], Y[None, :, None] - ctr[1], Z[None, None, :] - ctr[2]))
            ux = np.tensordot(rot[:, 0], d, axes=1) / (semi[0] * s)
            uy = np.tensordot(rot[:, 1], d, axes=1) / (semi[1] * s)
            uz = np.tensordot(rot[:, 2], d, axes=1) / (semi[2] * s)
            sinus = ((ux - 0.55) / 0.6) ** 2 + (uy / 0.45) ** 2 + (uz / 0.55) ** 2 < 1.0
            pelvis_ = ((ux - 0.6) / 0.35) ** 2 + (uy / 0.25) ** 2 + (uz / 0.35) ** 2 < 1.0
            m = (f < 1.0) & ~(sinus & (ux > 0.78))
            t = np.where(f > 0.72, T["kidney_cortex"], T["kidney_medulla"]).astype(np.uint8)
            t[sinus] = T["renal_sinus"]
            t[pelvis_] = T["urine"]
            c.paint(sl, m & notbone[sl], t, lab, ok)
        b.kidney_top[side] = ctr + rot[:, 2] * semi[2] * s * 0.9

    # gallbladder: pear in the liver's fossa, fundus toward the anterior wall
    gs = b.size(1.5)
    neck, fundus = b.W(36, 70, 70, off_liver), b.W(55, 105, 38, off_liver)
    ax = fundus - neck
    put(eval_blob(g, b.blob(0.5 * (neck + fundus), np.array([14, 14, 0.5 * np.linalg.norm(ax) / s + 4]) * gs,
                                frame(ax, (1, 0, 0)), 2.0)), L["gallbladder"], T["bile"])

    # pelvis: bladder, prostate (male) or uterus (female) posterior to it
    fill = float(np.clip(np.exp(rng.normal(0.0, 0.3)), 0.45, 1.8))
    bsemi = np.array([46, 36, 34]) * np.cbrt(fill) * np.array([1.0, 1.0, 1.0 + 0.2 * (fill - 1)])
    bctr = b.W(0, 62, z0 - 72 + 8 * (fill - 1), off_pel)
    pel_ok = cav_nb
    got = eval_blob(g, b.blob(bctr, bsemi, np.eye(3), 2.2))
    if got is not None:
        sl, f = got
        t = np.where(f > 1.0 - 3.0 / (bsemi.min() * s), T["bladder_wall"], T["urine"]).astype(np.uint8)
        c.paint(sl, (f < 1.0), t, L["urinary_bladder"], pel_ok)
    if b.female:
        usz = b.size()
        uaxis = (rng.normal(0, 0.2), 0.55 + rng.normal(0, 0.2), 0.85)
        got = eval_blob(g, b.blob(b.W(rng.normal(0, 6), 28, z0 - 60, off_pel), np.array([28, 20, 42]) * usz,
                                      frame(uaxis, (1, 0, 0)), 2.2))
        put(got, L["prostate_uterus"], T["uterus"], pel_ok)
        # ovaries: unlabelled soft-tissue confounders beside the uterus
        for side in (1, -1):
            put(eval_blob(g, b.blob(b.W(side * 42, 25, z0 - 55, off_pel), (14, 10, 12))), 0, T["soft_tissue"], pel_ok)
    else:
        psz = b.size()
        put(eval_blob(g, b.blob(b.W(0, 36, z0 - 112, off_pel), np.array([20, 16, 18]) * psz, np.eye(3), 2.0)),
            L["prostate_uterus"], T["prostate"], pel_ok)
        # seminal vesicles: unlabelled, between bladder base and rectum
        for side in (1, -1):
            sv = frame((side * 1.0, -0.3, 0.5), (0, 1, 0))
            put(eval_blob(g, b.blob(b.W(side * 16, 28, z0 - 100, off_pel), (7, 6, 18), sv)), 0, T["soft_tissue"], pel_ok)

    # splenic vein, SMV, SMA, left and right renal veins: unlabelled, carve the pancreas
    ca = cav_nb
    venous = [
        b.tube(b.Wn([(-82, 24, 74), (-45, 50, 58), (-12, 60, 50), (12, 62, 43)], off_pd), [5, 5, 5, 6]),
        b.tube(b.Wn([(12, 62, 43), (14, 70, 20), (15, 82, -12), (15, 88, -60)], off_pd), [6.5, 6, 5.5, 5]),
        b.tube(b.Wn([(-48, 8, 46), (-26, 36, 46), (-8, 48, 46), (18, 42, 45), (24, 35, 45)]), [5, 5, 4.5, 5, 6]),
        b.tube(b.Wn([(45, 8, 37), (32, 24, 39), (24, 32, 41)]), [5, 5, 6]),
    ]
    tf = raster_tubes(g, venous)
    if tf is not None:
        c.paint(tf.sl, tf.rho < 1.0, np.where(tf.tube <= 1, T["portal_vein"], T["vein"]).astype(np.uint8), 0, ca)
    sma = b.tube(b.Wn([(-8, 40, 56), (-4, 55, 42), (0, 68, 20), (3, 80, -12), (5, 86, -60)], off_pd * 0.5), [4.5, 4, 4, 3.5, 3.5])
    tf = raster_tubes(g, [sma])
    if tf is not None:
        c.paint(tf.sl, tf.rho < 1.0, T["artery"], 0, ca)

    # portal vein into the liver, hepatic veins to the IVC: blood tissue, liver keeps its label inside
    liv = [
        b.tube(b.Wn([(12, 62, 43), (28, 62, 60), (42, 58, 76), (75, 45, 86), (105, 35, 92)], off_liver), [7, 7, 6.5, 5, 3.5]),
        b.tube(b.Wn([(42, 58, 74), (15, 75, 90), (-20, 90, 96), (-50, 92, 98)], off_liver), [5.5, 5, 4, 3]),
        b.tube(b.Wn([(22, 48, 132), (60, 30, 118), (100, 15, 105)], off_liver), [6, 5, 3.5]),
        b.tube(b.Wn([(22, 48, 132), (45, 80, 112), (60, 100, 90)], off_liver), [5.5, 4.5, 3]),
        b.tube(b.Wn([(22, 48, 132), (-10, 80, 124), (-40, 95, 112)], off_liver), [5.5, 4.5, 3]),
    ]
    tf = raster_tubes(g, liv)
    if tf is not None:
        t = np.where(tf.tube <= 1, T["portal_vein"], T["vein"]).astype(np.uint8)
        lab = c.label[tf.sl]
        m = (tf.rho < 1.0) & ((lab == L["liver"]) | ((lab == 0) & b.abdomen[tf.sl] & (tf.tube <= 1)))
        c.paint(tf.sl, m, t, 0, ca, keep_labels=(L["liver"],))

    # esophagus: down the posterior mediastinum, through the hiatus, into the cardia
    etube = b.tube(b.Wn([(3, 30, 200), (-2, 36, 165), (-12, 48, 135), (-28, 60, 115), (-45, 66, 106)], off_st * 0.5, jitter=2.0),
                      np.array([8, 8, 7.5, 8, 9]) * b.size(0.6) * b.cfg.thin_organ_scale, wobble=0.1)
    tf = raster_tubes(g, [etube], squash_y=1.35)
    if tf is not None:
        t = np.full(tf.rho.shape, T["esophagus"], np.uint8)
        if rng.random() < 0.5:
            t[tf.rho < 0.3] = T["gas"]
        c.paint(tf.sl, (tf.rho < 1.0) & notbone[tf.sl], t, L["esophagus"], b.cav)

    # IVC (right) and aorta (left-anterior of the spine); both leave the field of view at the top
    ivc = b.tube(b.Wn([(10, 26, -42), (20, 30, 0), (24, 35, 50), (28, 42, 95), (22, 50, 140), (15, 58, 175)], jitter=2.0),
                    np.array([10, 10.5, 11, 12, 12, 13]) * b.size(0.7), wobble=0.08)
    tf = raster_tubes(g, [ivc], squash_y=1.3)
    if tf is not None:
        c.paint(tf.sl, (tf.rho < 1.0) & notbone[tf.sl], T["vein"], L["inferior_vena_cava"], b.cav)
    ao_r = 11.0 * b.size(0.6)
    aorta = b.tube(b.Wn([(-22, 12, 210), (-18, 20, 150), (-12, 29, 95), (-10, 33, 45), (-6, 34, 5), (-3, 30, -30)], jitter=1.5),
                      np.array([12.5, 12, 11.5, 10.5, 9.5, 8.5]) * ao_r / 11.0)
    tf = raster_tubes(g, [aorta])
    if tf is not None:
        t = np.full(tf.rho.shape, T["artery"], np.uint8)
        if rng.random() < 0.4:  # atherosclerotic wall calcification
            t[(tf.rho > 0.82) & (b.fine[tf.sl] > 1.6)] = T["calcification"]
        c.paint(tf.sl, (tf.rho < 1.0) & notbone[tf.sl], t, L["aorta"], b.cav)

    # adrenals: thin inverted-V plates just superior-medial of each kidney's upper pole
    ts = b.cfg.thin_organ_scale
    for side, lab in ((1, L["adrenal_gland_right"]), (-1, L["adrenal_gland_left"])):
        top = b.kidney_top[side]
        apex = top + np.array([-side * 10.0, 14.0 if side > 0 else 18.0, 16.0]) * s + rng.normal(0, 2.0, 3)
        az = float(np.clip(b.size(0.8), 0.85, 1.25))
        limbs = [((-side * 0.25, -0.45, -0.85), (side * 0.9, 0.0, -0.3)), ((side * 0.45, -0.35, -0.8), (0.0, 0.95, -0.3))]
        for direction, plate in limbs:
            length = rng.uniform(24.0, 30.0) * az
            rot = frame(direction, plate)
            ctr = apex + rot[:, 2] * length * 0.5 * s
            put(eval_blob(g, b.blob(ctr, (11.0 * az * ts, 4.5 * az * ts, length / 2), rot, 2.0, deform=0.6)), lab, T["adrenal"], cav_nb)
