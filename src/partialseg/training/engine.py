"""The one optimisation loop: every network partialseg trains (a method's model in ``training.trainer``,
the ``boxnet`` generalist) runs its steps through :func:`run_steps`.

A step: the learning rate of the schedule, the loss under bf16 autocast (``partialseg.runtime``), a
check that it is finite, backward, gradient clipping, the optimiser step, and a log row. What differs
between trainings is given as functions: where the batch of a step comes from (a pure function of
the step, so that a resumed run repeats the batches of an uninterrupted one), how the loss is made,
and what happens after the step (validation, checkpoints, progress).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from partialseg.errors import PartialsegError
from partialseg.runtime import autocast_context


def lr_at(step: int, total: int, cfg_lr: float, schedule: str) -> float:
    """The learning rate of ``step`` (0-based) of ``total``: ``constant``, or nnU-Net's ``poly``
    decay ``lr · (1 − step/total)^0.9``."""
    if schedule == "constant":
        return cfg_lr
    if schedule == "poly":
        return cfg_lr * (1.0 - step / max(total, 1)) ** 0.9
    raise PartialsegError(f"unknown lr schedule {schedule!r}; use 'poly' or 'constant'")


def run_steps(
    *,
    start: int,
    total: int,
    next_batch: Callable[[int], Any],
    loss_of: Callable[[Any, int], tuple[Tensor, dict[str, float]]],
    optimizer: torch.optim.Optimizer,
    parameters: Iterable[nn.Parameter],
    lr: Callable[[int], float],
    grad_clip: float,
    device: torch.device,
    amp: bool,
    amp_cpu: bool,
    after_step: Callable[[int, dict[str, Any], Tensor], None],
) -> None:
    """Steps ``start .. total - 1``. ``next_batch(step)`` gives the batch; ``loss_of(batch, step)`` the
    loss and its logged parts (run under autocast); ``after_step(step, row, loss)`` sees the row
    ``{"step": step + 1, "lr", **parts, "seconds"}`` after the optimiser step. ``grad_clip`` ≤ 0: none."""
    params = list(parameters)
    t0 = time.perf_counter()
    for step in range(start, total):
        batch = next_batch(step)
        rate = lr(step)
        for g in optimizer.param_groups:
            g["lr"] = rate
        with autocast_context(device, amp, amp_cpu):
            loss, parts = loss_of(batch, step)
        if not torch.isfinite(loss.detach()):
            raise PartialsegError(f"loss became {float(loss.detach())} at step {step}; lower the learning rate or check the data")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        after_step(step, {"step": step + 1, "lr": rate, **parts, "seconds": round(time.perf_counter() - t0, 3)}, loss)


__all__ = ["lr_at", "run_steps"]
