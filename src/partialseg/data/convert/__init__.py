"""Converters from the public collections' own layouts to partialseg's dataset (an nnU-Net v2 raw
folder with ``annotated_classes`` and ``case_groups``), labels named through the class registry.

``partialseg convert FORMAT SRC OUT``; then ``partialseg merge`` combines converted sources into one
label space (``examples/merge_converted_tct.yaml``: the TCT paper's KiTS + MSD collection).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

#: format name -> (module, function) converting ``(src, out, **options) -> out``
CONVERTERS: dict[str, tuple[str, str]] = {
    "msd": ("partialseg.data.convert.msd", "convert_msd"),
    "kits": ("partialseg.data.convert.kits", "convert_kits"),
    "btcv": ("partialseg.data.convert.btcv", "convert_btcv"),
    "amos": ("partialseg.data.convert.amos", "convert_amos"),
    "totalseg": ("partialseg.data.convert.totalseg", "convert_totalseg"),
    "chaos": ("partialseg.data.convert.chaos", "convert_chaos"),
    "word": ("partialseg.data.convert.named", "convert_named"),
    "flare22": ("partialseg.data.convert.named", "convert_named"),
    "named": ("partialseg.data.convert.named", "convert_named"),
}


def converter(name: str) -> Callable[..., Path]:
    import importlib

    from partialseg.errors import PartialsegError

    if name not in CONVERTERS:
        raise PartialsegError(f"unknown format {name!r}; converters: {sorted(CONVERTERS)}")
    module, func = CONVERTERS[name]
    return getattr(importlib.import_module(module), func)


def convert(name: str, src: str | Path, out: str | Path, **options: Any) -> Path:
    """Convert the collection at ``src`` (format ``name``) into the new dataset folder ``out``."""
    if CONVERTERS.get(name, ("", ""))[1] == "convert_named" and name != "named":
        options.setdefault("group", name)
    return converter(name)(Path(src), Path(out), **options)


__all__ = ["CONVERTERS", "convert", "converter"]
