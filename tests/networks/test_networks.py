"""Networks: the TCT Table-6 U-Net's parameter count, shapes, the features/head contract, errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from partialseg.networks import (
    NETWORKS,
    SegmentationNetwork,
    build_network,
    dynunet_plan,
    tct_unet_parameter_count,
)
from partialseg.runtime import cpu_bf16_autocast_is_fast


def table6_count(base: int, in_ch: int = 1, out_ch: int = 6) -> int:
    """Independent recount of Table 6 (conv weights + conv biases + 3x3x3 head with bias)."""
    b = base
    enc = [(in_ch, b), (b, b), (b, b), (b, 2 * b), (2 * b, 2 * b), (2 * b, 4 * b), (4 * b, 4 * b), (4 * b, 8 * b)]
    bott = [(8 * b, 8 * b), (8 * b, 16 * b)]
    # Decoder input = skip + upsampled: 48 = 16 + 32, 96, 192, 384 at b = 16.
    dec = [(3 * b, b), (b, b), (6 * b, 2 * b), (2 * b, 2 * b), (12 * b, 4 * b), (4 * b, 4 * b), (24 * b, 8 * b), (8 * b, 8 * b)]
    return sum(i * o * 27 + o for i, o in enc + bott + dec) + b * out_ch * 27 + out_ch


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    # Tiny tensors: with 2 OpenMP threads on a loaded 2-core box a step took ~8 s instead
    # of 0.2 s (threads spin at barriers while other jobs hold the cores).
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tct_unet_has_the_papers_4_12_m_parameters() -> None:
    net = build_network("unet_tct", 1, 6)
    n = net.num_parameters()
    assert round(n / 1e6, 2) == 4.12
    assert n == 4_123_814 == table6_count(16) == tct_unet_parameter_count(1, 6)
    # Affine norms with the 3x3x3 head would not match the paper's count.
    assert round(build_network("unet_tct", 1, 6, norm_affine=True).num_parameters() / 1e6, 2) == 4.13


def test_decoder_input_channels_follow_table_6() -> None:
    net = build_network("unet_tct", 1, 6)
    first_convs = [stage[0][0] for stage in net.decoder]  # deepest decoder stage first
    assert [(c.in_channels, c.out_channels) for c in first_convs] == [(384, 128), (192, 64), (96, 32), (48, 16)]
    assert net.head.kernel_size == (3, 3, 3)


@pytest.mark.parametrize("base", [4, 8, 12])
def test_width_option_scales_parameter_count(base: int) -> None:
    net = build_network("unet_tct", 1, 6, base_channels=base)
    assert net.num_parameters() == table6_count(base)
    assert net.feature_channels == base
    if base == 8:  # conv weights scale with base**2: ~1/4 of the paper's network
        assert 0.24 < net.num_parameters() / table6_count(16) < 0.26


@pytest.mark.parametrize("norm", ["batch", "instance", "group"])
def test_unet_shapes_features_head_and_backward(norm: str) -> None:
    net = build_network("unet_tct", 1, 6, base_channels=4, norm=norm)
    x = torch.randn(2, 1, 32, 16, 16)
    feats = net.features(x)
    assert feats.shape == (2, 4, 32, 16, 16)
    logits = net(x)
    assert logits.shape == (2, 6, 32, 16, 16)
    net.eval()  # batch norm uses running stats in eval: compare in one mode
    with torch.no_grad():
        torch.testing.assert_close(net.head(net.features(x)), net(x))
    net.train()
    net(x).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_extra_head_on_features() -> None:
    net = build_network("unet_tct", 1, 6, base_channels=4)
    aux = net.make_head(2 * 5)
    assert aux.in_channels == net.feature_channels and aux.kernel_size == (3, 3, 3)
    f = net.features(torch.randn(1, 1, 32, 16, 16))
    assert aux(f).shape == (1, 10, 32, 16, 16)


def test_unet_rejects_sizes_not_divisible_by_16() -> None:
    net = build_network("unet_tct", 1, 6, base_channels=4)
    with pytest.raises(ValueError, match=r"divisible by \(16, 16, 16\).*got \(24, 32, 16\).*\(32, 32, 16\)"):
        net(torch.randn(1, 1, 24, 32, 16))
    with pytest.raises(ValueError, match="input channel"):
        net(torch.randn(1, 2, 32, 16, 16))
    with pytest.raises(ValueError, match="5-D"):
        net(torch.randn(1, 32, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        build_network("unet_tct", 1, 6, patch_size=(64, 64, 40))
    with pytest.raises(ValueError, match="single voxel"):
        net(torch.randn(1, 1, 16, 16, 16))


def test_dynunet_plan_matches_nnunet_rules() -> None:
    iso = dynunet_plan((64, 64, 48), (5.0, 5.0, 5.0))
    assert iso.strides == ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 1))
    assert iso.bottleneck_size == (4, 4, 6) and iso.size_divisor == (16, 16, 8)
    assert iso.filters == (32, 64, 128, 256, 320)
    aniso = dynunet_plan((192, 192, 64), (1.0, 1.0, 3.0))
    # The 3 mm axis is neither pooled nor convolved across until in-plane spacing catches up.
    assert aniso.strides[1] == (2, 2, 1) and aniso.kernel_sizes[0] == (3, 3, 1)
    assert aniso.kernel_sizes[1] == (3, 3, 3) and aniso.strides[2] == (2, 2, 2)


def test_dynunet_shapes_features_head_and_backward() -> None:
    net = build_network("dynunet", 1, 6, patch_size=(32, 32, 16), spacing=(5, 5, 5), base_channels=4)
    assert isinstance(net, SegmentationNetwork)
    x = torch.randn(2, 1, 32, 32, 16)
    assert net.features(x).shape == (2, 4, 32, 32, 16)
    out = net(x)
    assert out.shape == (2, 6, 32, 32, 16)
    torch.testing.assert_close(net.head(net.features(x)), out)
    out.mean().backward()
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 1, 36, 32, 16))


def test_dynunet_deep_supervision_is_opt_in() -> None:
    net = build_network("dynunet", 1, 3, patch_size=(32, 32, 32), base_channels=4, deep_supervision=True)
    x = torch.randn(1, 1, 32, 32, 32)
    assert net(x).shape == (1, 3, 32, 32, 32)
    ds = net.deep_supervision_logits((32, 32, 32))
    assert len(ds) == 2 and all(t.shape == (1, 3, 32, 32, 32) for t in ds)
    plain = build_network("dynunet", 1, 3, patch_size=(32, 32, 32), base_channels=4)
    with pytest.raises(ValueError, match="deep_supervision"):
        plain.deep_supervision_logits((32, 32, 32))


def test_registry_errors() -> None:
    assert set(NETWORKS) == {"unet_tct", "dynunet"}
    with pytest.raises(ValueError, match=r"unknown network 'resnet'.*dynunet.*unet_tct"):
        build_network("resnet", 1, 6)
    with pytest.raises(ValueError, match=r"no option.*'width'.*base_channels"):
        build_network("unet_tct", 1, 6, width=2)
    with pytest.raises(ValueError, match="patch_size"):
        build_network("dynunet", 1, 6)
    with pytest.raises(ValueError, match="norm"):
        build_network("unet_tct", 1, 6, norm="layer")


def test_bf16_autocast_forward_backward() -> None:
    assert isinstance(cpu_bf16_autocast_is_fast(), bool)
    net = build_network("unet_tct", 1, 4, base_channels=4)
    x = torch.randn(1, 1, 32, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.shape == (1, 4, 32, 16, 16) and out.dtype == torch.bfloat16
    out.float().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())
