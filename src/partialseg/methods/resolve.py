"""A run's configuration resolved against the method registry: every option of the method with its
default filled in, and the differences between two configurations compared that way.

Here, not in ``partialseg.config``, because it needs the methods (torch), and the configuration is
what everything below the methods reads.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from partialseg.config import PLANNED_KEYS, ExperimentConfig, _to_plain
from partialseg.errors import PartialsegError


def with_method_defaults(cfg: ExperimentConfig) -> ExperimentConfig:
    """A copy whose ``method.options`` hold every option of the method, defaults filled in.

    This is the resolved configuration a run saves: a later change of a default cannot change
    what a saved run means. Imports the method registry (torch).
    """
    from partialseg.methods import get_method

    options = get_method(cfg.method.name).parse_options(cfg.method.options)
    out = copy.deepcopy(cfg)
    out.method.options = _to_plain(dataclasses.asdict(options)) if dataclasses.is_dataclass(options) else {}
    return out


def config_differences(a: ExperimentConfig | dict[str, Any], b: ExperimentConfig | dict[str, Any],
                       ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two configurations (``method.options.tau``, ...).

    Method options are compared with their defaults filled in (a run saved before an option
    existed compares equal to one that sets it to its default). A key in ``ignore``, or under one
    (``"method"`` ignores the whole section), is not compared. A planned key (:data:`PLANNED_KEYS`)
    that ``a`` leaves unset is not a difference: ``b`` then holds what planning chose for it.
    """
    def resolved(x: ExperimentConfig | dict[str, Any]) -> dict[str, Any]:
        cfg = x if isinstance(x, ExperimentConfig) else ExperimentConfig.from_dict(x)
        try:
            return with_method_defaults(cfg).to_dict()
        except PartialsegError:  # an unknown method or option: compare as written
            return cfg.to_dict()

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(d, dict) and d:
            out: dict[str, Any] = {}
            for k, v in d.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: d}

    fa, fb = flat(resolved(a)), flat(resolved(b))
    return sorted(
        k for k in set(fa) | set(fb)
        if fa.get(k) != fb.get(k) and not any(k == i or k.startswith(i + ".") for i in ignore)
        and not (k in PLANNED_KEYS and fa.get(k) is None)
    )


__all__ = ["config_differences", "with_method_defaults"]
