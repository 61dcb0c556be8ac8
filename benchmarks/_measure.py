"""Run a command and measure it: wall time, and the peak memory of its whole process tree (the command
and every worker it starts), sampled from ``/proc`` every 0.1 s. Shared by the benchmark scripts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Measured:
    seconds: float
    peak_rss_mb: float  # the tree's resident memory, file-backed pages (memory maps, page cache hits) included
    peak_anon_mb: float  # the tree's anonymous memory: what the processes themselves hold
    maxrss_mb: float  # the command's own ru_maxrss (its largest single process)


def _status(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, RSS MB, anonymous RSS MB) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    kb = lambda key: int(fields.get(key, "0 kB").split()[0]) / 1024  # noqa: E731
    return int(fields["PPid"]), kb("VmRSS"), kb("RssAnon")


def tree_memory(root: int) -> tuple[float, float]:
    """(RSS MB, anonymous RSS MB) summed over ``root`` and its descendants."""
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _status(int(entry))
            if st is not None:
                procs[int(entry)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    rss = anon = 0.0
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            rss += procs[pid][1]
            anon += procs[pid][2]
        todo.extend(children.get(pid, []))
    return rss, anon


def run_measured(cmd: list[str], log: Path, env: dict[str, str] | None = None, every_s: float = 0.1) -> Measured:
    """Run ``cmd`` (output to ``log``); exit with the log's tail if it fails."""
    t0 = time.perf_counter()
    peak_rss = peak_anon = 0.0
    with open(log, "w") as fh:
        p = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            rss, anon = tree_memory(p.pid)
            peak_rss, peak_anon = max(peak_rss, rss), max(peak_anon, anon)
            time.sleep(every_s)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"failed ({code}): {' '.join(map(str, cmd))}\n{log.read_text()[-3000:]}")
    return Measured(time.perf_counter() - t0, peak_rss, peak_anon, usage.ru_maxrss / 1024)


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


__all__ = ["Measured", "folder_mb", "run_measured", "tree_memory"]
