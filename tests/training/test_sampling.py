import numpy as np
import torch

from partialseg.config import AugmentConfig
from partialseg.labels import LabelSpace
from partialseg.training.augment import augment_batch
from partialseg.training.sampling import (
    Patch,
    choose_patch_origin,
    crop_with_padding,
    mirror_left_right,
    sample_patch,
)


def test_crop_with_padding_hand_example():
    a = np.arange(4 * 3 * 2).reshape(1, 4, 3, 2)
    out = crop_with_padding(a, [-1, 1, 0], [3, 3, 2], pad_value=-7)
    assert out.shape == (1, 3, 3, 2)
    assert (out[0, 0] == -7).all()  # x = -1 is outside
    np.testing.assert_array_equal(out[0, 1:, :2], a[0, :2, 1:])
    assert (out[0, :, 2] == -7).all()  # y = 3 is outside


def test_origin_random_and_centred():
    rng = np.random.default_rng(0)
    for _ in range(50):
        lo = choose_patch_origin((20, 10, 5), (8, 10, 9), rng)
        assert 0 <= lo[0] <= 12 and lo[1] == 0 and lo[2] == -2
        lo = choose_patch_origin((20, 10, 5), (8, 4, 4), rng, centre=(19, 0, 2))
        assert lo[0] <= 19 < lo[0] + 8 and lo[0] + 8 <= 20
        assert lo[1] == 0 and lo[2] <= 2 < lo[2] + 4


def test_foreground_sampling_is_class_balanced_over_annotated_classes():
    label = np.zeros((40, 40, 40), np.int16)
    label[:30, :30, :30] = 1  # large organ
    label[35, 35, 35] = 2  # one-voxel organ
    label[0, 39, 0] = 3  # unannotated: must never steer sampling
    locs = {1: np.argwhere(label == 1)[:500], 2: np.argwhere(label == 2), 3: np.argwhere(label == 3)}
    image = np.zeros((1, 40, 40, 40), np.float32)
    rng = np.random.default_rng(0)
    hits = {1: 0, 2: 0, 3: 0}
    for _ in range(400):
        p = sample_patch(image, label, frozenset({1, 2}), locs, (8, 8, 8), rng, force_foreground=True, pad_value=0.0)
        for c in hits:
            hits[c] += int((p.label == c).any())
    assert hits[1] > 150 and hits[2] > 150  # about half each
    assert hits[3] == 0


def test_mirror_swaps_left_and_right():
    space = LabelSpace(("liver", "kidney_right", "kidney_left"))
    label = np.zeros((4, 1, 1), np.int64)
    label[0], label[3] = 2, 1  # kidney_right at x=0, liver at x=3
    img = np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1)
    m = mirror_left_right(Patch(img, label, frozenset({1, 2}), frozenset()), space)
    assert m.label[:, 0, 0].tolist() == [1, 0, 0, 3]  # liver moved to x=0, kidney became left
    assert m.annotated == frozenset({1, 3})
    assert m.image[0, :, 0, 0].tolist() == [3, 2, 1, 0]


def test_augment_is_reproducible_and_keeps_labels_valid():
    img = torch.rand(2, 1, 16, 16, 16)
    lab = torch.randint(0, 4, (2, 16, 16, 16))
    cfg = AugmentConfig(p_rotate_scale=1.0, p_intensity=1.0, p_noise=1.0)
    a = augment_batch(img, lab, cfg, torch.Generator().manual_seed(1))
    b = augment_batch(img, lab, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(a[1].unique().tolist()) <= {0, 1, 2, 3}
    assert not torch.equal(a[0], img)
    same = augment_batch(img, lab, AugmentConfig(enabled=False), torch.Generator())
    assert same[0] is img


def test_rotation_keeps_superior_inferior_axis():
    # a slab that is constant along x and y is unchanged by a rotation about z (array axis 2)
    img = torch.zeros(1, 1, 16, 16, 16)
    img[..., 8:] = 1.0
    lab = (img[:, 0] > 0).long()
    cfg = AugmentConfig(p_rotate_scale=1.0, p_intensity=0.0, p_noise=0.0, scale_range=(1.0, 1.0))
    out, olab = augment_batch(img, lab, cfg, torch.Generator().manual_seed(3))
    inner = (slice(None), slice(None), slice(5, 11), slice(5, 11))
    assert torch.equal(olab[inner], lab[inner])
