"""Segmentation networks behind one interface, built by name.

``build_network("unet_tct", 1, 16)`` gives the TCT paper's Table-6 3D U-Net;
``build_network("dynunet", 1, 16, patch_size=(64, 64, 48), spacing=(5, 5, 5))`` an
nnU-Net-style DynUNet. Every network is a :class:`SegmentationNetwork`:
``forward(x) == head(features(x))``, with ``features`` at input resolution.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from partialseg.errors import InputError
from partialseg.networks.base import SegmentationNetwork, check_patch_size
from partialseg.networks.dynunet import DynUNetPlan, DynUNetSegmentation, dynunet_plan
from partialseg.networks.unet import TCTUNet, tct_unet_parameter_count

#: Name -> constructor ``(in_channels, out_channels, **options) -> SegmentationNetwork``.
NETWORKS: dict[str, Callable[..., SegmentationNetwork]] = {
    "unet_tct": TCTUNet,
    "dynunet": DynUNetSegmentation,
}


def network_options(name: str) -> tuple[str, ...]:
    """The keyword options network ``name`` accepts (besides in/out channels)."""
    ctor = _lookup(name)
    params = list(inspect.signature(ctor).parameters)
    return tuple(p for p in params if p not in ("in_channels", "out_channels"))


def build_network(name: str, in_channels: int, out_channels: int, **options: Any) -> SegmentationNetwork:
    """Build a registered network.

    Args:
        name: a key of :data:`NETWORKS` (``"unet_tct"``, ``"dynunet"``).
        in_channels: image channels (1 for CT).
        out_channels: N organs + background.
        **options: network options (see each class); ``patch_size`` and ``spacing`` are
            accepted by every network, so a training config can always pass them.

    Raises:
        InputError (a ValueError): unknown name (the message lists the known ones), an
            option the network does not take (listing the ones it does), or a bad value.
    """
    ctor = _lookup(name)
    allowed = network_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InputError(None, f"network {name!r} has no option(s) {unknown}; its options are {list(allowed)}")
    return ctor(in_channels, out_channels, **options)


def _lookup(name: str) -> Callable[..., SegmentationNetwork]:
    try:
        return NETWORKS[name]
    except KeyError:
        raise InputError(None, f"unknown network {name!r}; known networks: {sorted(NETWORKS)}") from None


__all__ = [
    "NETWORKS",
    "DynUNetPlan",
    "DynUNetSegmentation",
    "SegmentationNetwork",
    "TCTUNet",
    "build_network",
    "check_patch_size",
    "dynunet_plan",
    "network_options",
    "tct_unet_parameter_count",
]
