"""Errors that name the user's file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class PartialsegError(Exception):
    """Base class for errors partialseg reports to the user (the CLI prints them without a traceback)."""


class InputError(PartialsegError, ValueError):
    """Bad input: ``InputError(path, problem)`` reads ``<path>: <problem>``."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class OutputExistsError(PartialsegError, FileExistsError):
    """Refusal to write over something that already exists."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: already exists; partialseg never overwrites, choose a new output path")
