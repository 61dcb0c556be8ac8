"""TransDoDNet's task queries and Hermes's task tokens: stage hooks, shapes, hand-counted parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from partialseg.errors import InputError
from partialseg.networks import build_network
from partialseg.networks.base import Stage
from partialseg.networks.dynamic_head import dynamic_head_parameter_count
from partialseg.networks.task_query import TaskQueryNetwork
from partialseg.networks.task_tokens import TaskTokenNetwork
from partialseg.networks.tokens import normalised_coordinates, stage_hooks


def _backbone(name="unet_tct"):
    if name == "dynunet":
        return build_network("dynunet", 1, 4, patch_size=(32, 32, 32), spacing=(2, 2, 2), base_channels=8, max_poolings=4)
    return build_network("unet_tct", 1, 4, base_channels=4)


def test_stage_hooks_read_and_replace_outputs_then_go():
    seq = nn.Sequential(nn.Identity(), nn.Identity())
    stages = [Stage("encoder", seq[0], 1), Stage("decoder", seq[1], 1)]
    seen = []
    with stage_hooks(stages, lambda k, out: seen.append(k) or (out * 10 if k == 0 else None)):
        assert seq(torch.ones(1)).item() == 10
    assert seen == [0, 1]
    assert seq(torch.ones(1)).item() == 1 and not seq[0]._forward_hooks


def test_normalised_coordinates_follow_flatten_order():
    c = normalised_coordinates((2, 3, 1), torch.device("cpu"), torch.float32)
    assert c.shape == (6, 3)
    torch.testing.assert_close(c[1], torch.tensor([-1.0, 0.0, 0.0]))  # (x=0, y=1, z=0)
    torch.testing.assert_close(c[5], torch.tensor([1.0, 1.0, 0.0]))


@pytest.mark.parametrize("backbone", ["unet_tct", "dynunet"])
@pytest.mark.parametrize("cls", [TaskQueryNetwork, TaskTokenNetwork])
def test_one_map_per_class_and_per_sample(cls, backbone):
    torch.manual_seed(0)
    net = cls(_backbone(backbone), 3, d_model=16, num_heads=2)
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (2, 3, 32, 32, 32) and torch.isfinite(y).all()
        torch.testing.assert_close(y[1:], net(x[1:]), rtol=1e-3, atol=1e-4)
    for s in net.backbone.stages():
        assert not s.module._forward_hooks  # nothing left behind after a pass


def _transformer_decoder_layer(d):
    # self- and cross-attention (4 d x d + 4 d each), MLP d -> 4d -> d, three LayerNorms
    return 2 * (4 * d * d + 4 * d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 3 * 2 * d


def test_task_query_parameter_count_by_hand():
    d, n, layers, levels, h = 16, 3, 2, 3, 8
    backbone = _backbone()
    b = 4
    base = backbone.num_parameters() - sum(p.numel() for p in backbone.head.parameters())
    net = TaskQueryNetwork(backbone, n, d_model=d, num_heads=2, num_layers=layers, levels=levels)
    memory = sum(c * d + d + 3 * d + d for c in (4 * b, 8 * b, 16 * b))  # 1x1x1 projection + position code
    expected = (base + memory + levels * d + n * d + layers * _transformer_decoder_layer(d) + 2 * d
                + (2 * b + b * h + h) + d * dynamic_head_parameter_count(h) + dynamic_head_parameter_count(h))
    assert net.num_parameters() == expected


def test_task_token_parameter_count_by_hand():
    d, n, m = 16, 3, 1
    backbone = _backbone()
    b = 4
    base = backbone.num_parameters() - sum(p.numel() for p in backbone.head.parameters())
    net = TaskTokenNetwork(backbone, n, num_modalities=m, d_model=d, num_heads=2)

    def block(c):  # tokens + position, 4 LayerNorms, 3 attentions, MLP d -> 4d -> d, zero-init output conv
        return (c * d + d + 3 * d + d) + 4 * 2 * d + 3 * (4 * d * d + 4 * d) + (8 * d * d + 5 * d) + (d * c + c)

    blocks = sum(block(c) for c in (16 * b, 8 * b, 4 * b, 2 * b))  # bottleneck + decoder stages below full res
    prototype = 2 * d + (d * d + d) + (d * b + b)
    expected = base + blocks + prototype + 2 * b + n * d + m * d + n
    assert net.num_parameters() == expected


def test_hermes_starts_from_the_backbone_and_its_tokens_then_change_it():
    torch.manual_seed(0)
    backbone = _backbone()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        before = backbone.features(x)
        net = TaskTokenNetwork(backbone, 3, d_model=16, num_heads=2)
        torch.testing.assert_close(net.features(x), before)  # zero-initialised feature updates
        nn.init.normal_(net.blocks[0].out.weight)
        assert (net.features(x) - before).abs().max() > 1e-3  # the bottleneck update reaches the features


def test_task_queries_condition_the_heads():
    torch.manual_seed(0)
    net = TaskQueryNetwork(_backbone(), 3, d_model=16, num_heads=2)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        y = net(x)
        net.queries[1] += torch.randn(16)  # (a constant shift would vanish in the LayerNorms)
        y2 = net(x)
    assert (y2[:, 1] - y[:, 1]).abs().max() > 1e-2


def test_bad_options_are_refused():
    with pytest.raises(InputError, match="levels"):
        TaskQueryNetwork(_backbone(), 3, levels=9)
    with pytest.raises(InputError, match="divisible"):
        TaskTokenNetwork(_backbone(), 3, d_model=10, num_heads=4)
