"""DoDNet / CLIP-Driven dynamic heads: shapes, parameter counts, and the batched heads against a literal loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from partialseg.errors import InputError
from partialseg.networks import build_network
from partialseg.networks.dynamic_head import (
    DynamicHeadNetwork,
    apply_dynamic_heads,
    dynamic_head_parameter_count,
)


def test_head_parameter_count_is_8_8_1():
    assert dynamic_head_parameter_count(8) == (64 + 8) + (64 + 8) + (8 + 1) == 153


def test_batched_heads_equal_one_conv3d_per_sample_and_class():
    g = torch.Generator().manual_seed(0)
    b, n, h = 2, 3, 4
    feats = torch.randn(b, h, 5, 4, 3, generator=g, dtype=torch.float64)
    params = torch.randn(b, n, dynamic_head_parameter_count(h), generator=g, dtype=torch.float64)
    got = apply_dynamic_heads(feats, params, h)
    assert got.shape == (b, n, 5, 4, 3)
    torch.testing.assert_close(apply_dynamic_heads(feats, params, h, chunk=7), got)  # 60 voxels in 9 chunks
    for i in range(b):
        for k in range(n):
            p = params[i, k]
            w1, b1 = p[: h * h].reshape(h, h, 1, 1, 1), p[h * h : h * h + h]
            o = h * h + h
            w2, b2 = p[o : o + h * h].reshape(h, h, 1, 1, 1), p[o + h * h : o + h * h + h]
            o += h * h + h
            w3, b3 = p[o : o + h].reshape(1, h, 1, 1, 1), p[o + h :]
            x = F.relu(F.conv3d(feats[i : i + 1], w1, b1))
            x = F.relu(F.conv3d(x, w2, b2))
            x = F.conv3d(x, w3, b3)
            torch.testing.assert_close(got[i, k], x[0, 0])


@pytest.mark.parametrize("task_code", ["onehot", "embedding"])
def test_shapes_and_parameter_count(task_code):
    n, b = 5, 4
    backbone = build_network("unet_tct", 1, n, base_channels=b)
    net = DynamicHeadNetwork(backbone, n, task_code=task_code, embedding_dim=16, projection_dim=8)
    x = torch.randn(2, 1, 32, 32, 32)
    assert net(x).shape == (2, n, 32, 32, 32)
    backbone_only = build_network("unet_tct", 1, n, base_channels=b).num_parameters() - (b * n * 27 + n)
    pre = b * 8 + 8  # GroupNorm has affine (2b) + conv b -> 8
    pre += 2 * b
    code = n if task_code == "onehot" else 8
    controller = (16 * b + code) * 153 + 153
    extra = 0 if task_code == "onehot" else n * 16 + 16 * 8 + 8  # learnt embeddings + projection
    assert net.num_parameters() == backbone_only + pre + controller + extra


def test_each_sample_gets_its_own_heads():
    net = DynamicHeadNetwork(build_network("unet_tct", 1, 3, base_channels=4), 3)
    x = torch.randn(2, 1, 32, 32, 32)
    torch.testing.assert_close(net(x)[1:], net(x[1:]), rtol=1e-3, atol=1e-4)


def test_fixed_embeddings_are_a_buffer_of_the_model():
    emb = torch.randn(3, 16)
    net = DynamicHeadNetwork(build_network("unet_tct", 1, 3, base_channels=4), 3, task_code="embedding",
                             embedding_dim=16, projection_dim=8, embeddings=emb)
    assert "embeddings" in net.state_dict() and not any(n == "embeddings" for n, _ in net.named_parameters())
    torch.testing.assert_close(net.state_dict()["embeddings"], emb)
    with pytest.raises(InputError, match=r"\(3, 16\)"):
        DynamicHeadNetwork(build_network("unet_tct", 1, 3, base_channels=4), 3, task_code="embedding",
                           embedding_dim=16, embeddings=torch.randn(2, 16))


def test_dynunet_backbone_exposes_its_bottleneck():
    backbone = build_network("dynunet", 1, 3, patch_size=(32, 32, 32), base_channels=8, max_channels=32)
    f, bottleneck = backbone.features_and_bottleneck(torch.randn(1, 1, 32, 32, 32))
    assert f.shape[1] == backbone.feature_channels and bottleneck.shape[1] == backbone.bottleneck_channels
    assert DynamicHeadNetwork(backbone, 3)(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


def test_he_controller_init_starts_every_head_as_the_he_head_in_the_bias():
    torch.manual_seed(0)
    he = DynamicHeadNetwork(build_network("unet_tct", 1, 3, base_channels=4), 3, controller_init="he")
    torch.manual_seed(0)
    default = DynamicHeadNetwork(build_network("unet_tct", 1, 3, base_channels=4), 3, controller_init="default")
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        spread_he, spread_default = he(x).std(dim=(2, 3, 4)).mean(), default(x).std(dim=(2, 3, 4)).mean()
        assert spread_he > 5 * spread_default  # default: nearly constant logits at the start
        he.controller.weight.zero_()  # what is left is the bias: the same He head for every class
        f = he.head(he.backbone.features(x))
        expected = apply_dynamic_heads(f, he.controller.bias.expand(1, 3, -1), 8)
        torch.testing.assert_close(he(x), expected)
    bias = he.controller.bias.detach()
    w1 = bias[:64]
    assert bias[64:72].abs().sum() == 0 and bias[-1] == 0  # biases start at zero
    assert 0.3 < float(w1.std()) < 0.7  # He: sqrt(2 / 8) = 0.5


def test_unknown_controller_init_is_refused():
    with pytest.raises(ValueError, match="controller_init"):
        DynamicHeadNetwork(build_network("unet_tct", 1, 3, base_channels=4), 3, controller_init="xavier")
