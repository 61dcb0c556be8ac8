import numpy as np
import pytest
import torch
from torch import nn

from partialseg.inference.sliding_window import sliding_window_probabilities, z_slabs


@pytest.mark.parametrize("size,roi,overlap,max_len", [(100, 8, 0.5, 24), (97, 8, 0.25, 30), (41, 6, 0.5, 18), (20, 8, 0.5, 100)])
def test_z_slabs_kept_parts_tile_the_axis(size, roi, overlap, max_len):
    slabs = z_slabs(size, roi, overlap, max_len)
    interval = int(roi * (1 - overlap))
    assert slabs[0][2] == 0 and slabs[-1][3] == size
    for (a, b, ka, kb), nxt in zip(slabs, slabs[1:] + [None]):
        assert a % interval == 0 and b - a <= max(max_len, 3 * roi) and a <= ka < kb <= b
        if nxt is not None:
            assert nxt[2] == kb  # no gap, no overlap between kept parts
            assert kb <= b - roi and nxt[0] <= kb - roi  # every kept voxel has a roi of context both sides
    if size > max(max_len, 3 * roi):
        assert len(slabs) > 1


class _Conv(nn.Module):
    out_channels = 3

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_slabbed_inference_matches_one_pass():
    net = _Conv()
    image = np.random.default_rng(0).normal(size=(1, 12, 10, 90)).astype(np.float32)
    soft = lambda z: torch.softmax(z, 1)  # noqa: E731
    whole = sliding_window_probabilities(net, soft, image, (8, 8, 8), overlap=0.5, amp=False)
    # one Z slice of float32 working memory is 4 * 12 * 10 * 9 bytes: 24 slices per slab
    slab_gb = 24 * 4 * 12 * 10 * 9 / 2**30
    assert len(z_slabs(90, 8, 0.5, 24)) >= 4
    slabbed = sliding_window_probabilities(net, soft, image, (8, 8, 8), overlap=0.5, amp=False, slab_gb=slab_gb)
    assert slabbed.shape == whole.shape == (3, 12, 10, 90)
    torch.testing.assert_close(slabbed, whole, rtol=1e-5, atol=1e-6)
    labels = sliding_window_probabilities(net, soft, image, (8, 8, 8), overlap=0.5, amp=False, slab_gb=slab_gb, argmax=True)
    assert labels.dtype == torch.int16 and labels.shape == (12, 10, 90)
    assert torch.equal(labels, whole.argmax(0).to(torch.int16))
    half = sliding_window_probabilities(net, soft, image, (8, 8, 8), overlap=0.5, amp=False, slab_gb=slab_gb, dtype=torch.float16)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), whole, rtol=0, atol=1e-3)


def test_left_right_mirror_tta_is_symmetric_and_swaps_paired_organs_back():
    from partialseg.errors import PartialsegError
    from partialseg.inference.sliding_window import LeftRightMirrored, mirror_permutation
    from partialseg.labels import LabelSpace

    space = LabelSpace(("liver", "kidney_right", "kidney_left", "spleen"))
    perm = mirror_permutation(space, space.num_channels)
    assert perm == [0, 1, 3, 2, 4]
    assert mirror_permutation(space, space.num_classes) == [0, 2, 1, 3]  # per-organ sigmoid: no background channel
    with pytest.raises(PartialsegError, match="one output per label or per organ"):
        mirror_permutation(space, 7)
    torch.manual_seed(0)
    net = nn.Conv3d(1, 5, 3, padding=1)
    tta = LeftRightMirrored(net, perm)
    x = torch.randn(1, 1, 6, 5, 4)
    with torch.no_grad():
        y = tta(x)
        expected = (net(x) + net(x.flip(2)).flip(2)[:, perm]) / 2
        torch.testing.assert_close(y, expected)
        # the averaged prediction of a mirrored image is the mirror image of the prediction, kidneys swapped
        torch.testing.assert_close(tta(x.flip(2)), y.flip(2)[:, perm], rtol=1e-5, atol=1e-6)
    probs = sliding_window_probabilities(tta, lambda z: torch.softmax(z, 1), x[0].numpy(), (4, 4, 4), amp=False)
    assert probs.shape == (5, 6, 5, 4)


class _DtypeSpy(_Conv):
    def __init__(self):
        super().__init__()
        self.seen: set[torch.dtype] = set()
        self.beyond_float16 = False  # a window held a value float16 cannot represent

    def forward(self, x):
        self.seen.add(x.dtype)
        self.beyond_float16 |= bool((x != x.half().float()).any())
        return self.conv(x)


@pytest.mark.parametrize("shape", [(12, 10, 30), (5, 10, 6)])  # the second is smaller than the patch: padded
def test_float16_blending_reads_float32_windows_and_matches_float32_blending(shape):
    net = _DtypeSpy()
    image = np.random.default_rng(1).normal(size=(1, *shape)).astype(np.float32)
    soft = lambda z: torch.softmax(z, 1)  # noqa: E731
    ref = sliding_window_probabilities(net, soft, image, (8, 8, 8), overlap=0.5, amp=False)
    low = sliding_window_probabilities(net, soft, image, (8, 8, 8), overlap=0.5, amp=False, sw_batch_size=1,
                                       blend_dtype=torch.float16)
    # the network saw the float32 image, not MONAI's float16 copy
    assert net.seen == {torch.float32} and net.beyond_float16
    assert low.shape == ref.shape == (3, *shape)
    torch.testing.assert_close(low, ref, rtol=0, atol=2e-3)
    labels = sliding_window_probabilities(net, soft, image, (8, 8, 8), overlap=0.5, amp=False, argmax=True,
                                          blend_dtype=torch.float16)
    assert (labels == ref.argmax(0)).float().mean() > 0.99
