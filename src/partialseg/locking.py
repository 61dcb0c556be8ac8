"""One writer per run folder: an advisory lock that names its holder and outlives nothing.

``folder_lock(run)`` holds ``fcntl.flock`` on a sibling file ``.<name>.lock`` (beside the
folder, so the folder itself stays empty until the run writes into it). The kernel drops a
flock when its process dies, so a lock file left by a killed process is recognised as stale
and taken over; a live holder makes a second process fail at once with "in use by PID N".
The lock is re-entrant within a process (``fit`` and the ``train`` it calls take the same one).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from partialseg.errors import PartialsegError

log = logging.getLogger("partialseg")

_held: dict[Path, int] = {}  # resolved lock file -> nesting depth in this process


class FolderInUseError(PartialsegError):
    """Another live process holds the folder's lock."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (a zombie or another user's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_path(folder: str | Path) -> Path:
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.lock"


def _read_holder(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder``'s lock for the duration of the block (see the module docstring).

    Raises ``FolderInUseError`` naming the holder's PID when another process holds it.
    """
    folder = Path(folder)
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = path.resolve()
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _read_holder(path).split()
            who = f"PID {holder[0]}" + (f" on {holder[1]}" if len(holder) > 1 else "") if holder else "another process"
            raise FolderInUseError(f"{folder}: in use by {who} (lock {path}); wait for it to finish or stop it") from None
        # the file may have been unlinked by its previous holder between our open and flock: retry on the new one
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    stale = _read_holder(path).split()
    if stale and stale[0].isdigit() and int(stale[0]) != os.getpid():
        log.warning("%s: took over the stale lock of PID %s, which no longer runs", folder, stale[0])
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    _held[key] = 1
    try:
        yield
    finally:
        _held.pop(key, None)
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding it, so no one else can be holding this inode
        os.close(fd)
