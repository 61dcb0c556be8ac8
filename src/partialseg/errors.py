"""Errors that name the user's file and what is wrong with it, and warnings the user sees."""

from __future__ import annotations

import warnings
from pathlib import Path


class PartialsegError(Exception):
    """Base class for errors partialseg reports to the user (the CLI prints them without a traceback)."""


class InputError(PartialsegError, ValueError):
    """Bad input: ``InputError(path, problem)`` reads ``<path>: <problem>``."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")

    def __reduce__(self):  # noqa: ANN204 - raised in a worker process, re-raised in the parent
        return (type(self), (self.path, self.problem))


class OutputExistsError(PartialsegError, FileExistsError):
    """Refusal to write over something that already exists."""

    def __init__(self, path: str | Path, hint: str = "partialseg never overwrites, choose a new output path") -> None:
        self.path = Path(path)
        self.hint = hint
        super().__init__(f"{path}: already exists; {hint}")

    def __reduce__(self):  # noqa: ANN204
        return (type(self), (self.path, self.hint))


class OutputWriteError(PartialsegError, OSError):
    """An output could not be written. Names the path the user gave, never a hidden temporary one."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: cannot write ({reason})")

    def __reduce__(self):  # noqa: ANN204
        return (type(self), (self.path, self.reason))


class PartialsegWarning(UserWarning):
    """Something that is probably wrong with an input but does not stop the command (the CLI prints it)."""


def warn(path: str | Path | None, problem: str) -> None:
    """Issue a ``PartialsegWarning`` reading ``<path>: <problem>``, like ``InputError``'s message."""
    warnings.warn(problem if path is None else f"{path}: {problem}", PartialsegWarning, stacklevel=2)
