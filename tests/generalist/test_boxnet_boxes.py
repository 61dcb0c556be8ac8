"""boxnet's per-organ bounding boxes: prompts read from the box equal prompts from the whole-volume mask."""

from __future__ import annotations

import numpy as np

from partialseg.generalist.boxnet import BoxNetCase, BoxNetConfig, _sample, organ_boxes, organ_prompts
from partialseg.generalist.prompts import box_prompts_from_mask


def _labels(seed: int) -> np.ndarray:
    """Organs in several pieces, some touching the volume's faces (where the padding is clipped)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((30, 26, 18), np.int16)
    for k in (1, 2, 3):
        for _ in range(int(rng.integers(1, 4))):
            lo = [int(rng.integers(0, s - 2)) for s in lab.shape]
            hi = [min(a + int(rng.integers(1, 9)), s) for a, s in zip(lo, lab.shape)]
            lab[tuple(slice(a, b) for a, b in zip(lo, hi))] = k
    lab[0, :3, :2] = 3  # on the faces x = 0, z = 0
    return lab


def test_organ_boxes_are_the_bounding_boxes_of_each_label():
    lab = _labels(0)
    boxes = organ_boxes(lab)
    assert sorted(boxes) == sorted(set(np.unique(lab).tolist()) - {0})
    for k, (lo, hi) in boxes.items():
        idx = np.argwhere(lab == k)
        assert list(lo) == idx.min(0).tolist() and list(hi) == (idx.max(0) + 1).tolist()


def test_prompts_from_the_box_equal_prompts_from_the_whole_mask():
    for seed in range(8):
        lab = _labels(seed)
        for k, box in organ_boxes(lab).items():
            for padding in (0, 3, 5, 40):
                assert organ_prompts(lab, k, box, padding) == box_prompts_from_mask(lab == k, padding=padding)


def _old_sample(case, k, cfg, rng):
    """boxnet's ``_sample`` before the boxes (whole-volume ``label == k``), for one case and organ."""
    from partialseg.generalist.boxnet import _window, boxnet_input
    from partialseg.generalist.prompts import BoxPrompt, prompts_bbox
    from partialseg.training.sampling import crop_with_padding

    rng.integers(1)  # the organ draw
    rng.integers(1)  # the case draw
    mask = case.label == k
    pad = int(rng.integers(max(cfg.padding - 2, 0), cfg.padding + 3))
    prompts = []
    for p in box_prompts_from_mask(mask, padding=pad):
        lo, hi = list(p.lo), list(p.hi)
        for d in range(3):
            if d != p.axis:
                j = cfg.box_jitter
                lo[d] = int(np.clip(lo[d] + rng.integers(-j, j + 1), 0, mask.shape[d] - 1))
                hi[d] = int(np.clip(hi[d] + rng.integers(-j, j + 1), lo[d] + 1, mask.shape[d]))
        prompts.append(BoxPrompt(p.axis, p.index, tuple(lo), tuple(hi)))
    lo, hi = prompts_bbox(prompts)
    offset = [int(rng.integers(-cfg.shift, cfg.shift + 1)) for _ in range(3)]
    origin, size = _window(lo, hi, cfg.crop_size, offset=offset, grow=False)
    x = boxnet_input(case.image, prompts, origin, size, cfg.hu_window)
    return x, (crop_with_padding(case.label, origin, size, pad_value=0) == k).astype(np.int64)


def test_a_sample_is_the_one_the_whole_volume_mask_gave():
    lab = _labels(1)
    case = BoxNetCase(np.random.default_rng(0).normal(size=lab.shape).astype(np.float32), lab, frozenset({0, 1, 2, 3}))
    cfg = BoxNetConfig(crop_size=(32, 16, 16))
    boxes = [organ_boxes(lab)]
    for k in boxes[0]:
        for seed in range(4):
            a = _sample([case], {k: [0]}, cfg, np.random.default_rng(seed), boxes)
            b = _old_sample(case, k, cfg, np.random.default_rng(seed))
            c = _sample([case], {k: [0]}, cfg, np.random.default_rng(seed))  # boxes found on the fly
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
            assert np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1])
