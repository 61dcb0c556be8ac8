"""The run folder of a multi-stage method (IPnP's rounds, PFL's teachers and student): opened once,
its resolved configuration written first, a resume held to the saved configuration."""

from __future__ import annotations

from pathlib import Path

from partialseg.config import EXECUTION_KEYS, ExperimentConfig, load_config
from partialseg.errors import InputError, OutputExistsError
from partialseg.io import write_text_atomic
from partialseg.methods.resolve import config_differences, with_method_defaults


def open_stage_run(out: str | Path, cfg: ExperimentConfig, *, resume: bool) -> tuple[Path, ExperimentConfig]:
    """Create (or, with ``resume``, reopen) the run folder; returns it and the resolved configuration.

    A non-empty folder without ``resume`` is refused; a resume whose configuration differs from the
    saved one (execution settings aside) is refused, naming the keys."""
    run = Path(out)
    if run.exists() and any(run.iterdir()) and not resume:
        raise OutputExistsError(run)
    if resume and (run / "config.yaml").exists():
        differ = config_differences(cfg, load_config(run / "config.yaml"), ignore=EXECUTION_KEYS)
        if differ:
            raise InputError(run / "config.yaml", f"the given configuration differs from the run's in {differ}; "
                                                  "resume it with the saved one or start a new run")
    run.mkdir(parents=True, exist_ok=True)
    cfg = with_method_defaults(cfg)
    write_text_atomic(cfg.to_yaml(), run / "config.yaml")
    return run, cfg


__all__ = ["open_stage_run"]
