"""What ``/proc`` says about a process and its descendants (a daemon's upload process, the
workers of ``server.workers`` and theirs): CPU seconds and memory, plus a sampler.

Memory of several processes is given two ways: the sum of their RSS, which counts pages they
share (the Python binary, shared libraries) once per process, and the sum of their PSS
(proportional set size: each shared page divided among the processes that map it), which
counts every page once, as the memory cgroup of a container does."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TypeVar

_TICKS = os.sysconf("SC_CLK_TCK")
KIB = 1024
MIB = 1024 * KIB
_N = TypeVar("_N", int, float)
#: How often a sampler looks for new descendants (an upload process starts at the first upload).
_TREE_REFRESH_S = 2.0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of every thread of ``pid`` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; the fields after its ")" start at field 3.
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all CPUs; idle and iowait excluded)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields) - idle - iowait) / _TICKS


def children(pid: int) -> list[int]:
    """Pids of the live child processes of ``pid``."""
    return _parents().get(pid, [])


def descendants(pid: int) -> list[int]:
    """Pids of the live children of ``pid``, their children, and so on."""
    parents = _parents()
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _parents() -> dict[int, list[int]]:
    """Live pids by parent pid."""
    found: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        found.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    return found


def _readings(pids: Iterable[int], read: Callable[[int], _N]) -> list[_N]:
    """``read(pid)`` for each of ``pids`` still there to read (one gone meanwhile counts 0)."""
    found = []
    for pid in pids:
        try:
            found.append(read(pid))
        except (OSError, KeyError):
            continue
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants so far."""
    return sum(_readings((pid, *descendants(pid)), cpu_seconds))


def _kib_field(path: str, name: str) -> int:
    """The ``name:`` field, in kB, of a ``/proc`` file such as ``status``, in bytes."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * KIB
    raise KeyError(f"{name} not in {path}")


def memory_bytes(pid: int, name: str = "VmRSS") -> int:
    """A ``/proc/<pid>/status`` memory field in bytes: VmRSS (now) or VmHWM (peak)."""
    return _kib_field(f"/proc/{pid}/status", name)


def pss_bytes(pid: int) -> int:
    """Proportional set size of ``pid`` in bytes (``/proc/<pid>/smaps_rollup``)."""
    return _kib_field(f"/proc/{pid}/smaps_rollup", "Pss")


def tree_memory(pids: list[int]) -> tuple[int, int]:
    """(RSS summed, PSS summed) in bytes over ``pids``; processes gone meanwhile count 0."""
    return sum(_readings(pids, memory_bytes)), sum(_readings(pids, pss_bytes))


def tree_peak_rss(pid: int) -> int:
    """Peak RSS (VmHWM) of ``pid`` plus that of each live descendant: an upper bound of the
    peak of their sum (the peaks may fall at different moments)."""
    return sum(_readings((pid, *descendants(pid)), partial(memory_bytes, name="VmHWM")))


@dataclass
class RssSampler:
    """Samples the memory of some processes, each with its descendants, in a thread:
    ``with RssSampler([pid]) as s: ...``."""

    pids: list[int]
    interval_s: float = 0.25
    samples: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    """Per pid: (seconds since start, RSS bytes of it and its descendants)."""
    pss_samples: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    """Per pid: (seconds since start, PSS bytes of it and its descendants)."""
    _trees: dict[int, list[int]] = field(default_factory=dict)
    _trees_at: float = -1.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: float = 0.0

    def __enter__(self) -> RssSampler:
        self._started = time.monotonic()
        self.samples = {pid: [] for pid in self.pids}
        self.pss_samples = {pid: [] for pid in self.pids}
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        now = time.monotonic() - self._started
        if self._trees_at < 0 or now - self._trees_at >= _TREE_REFRESH_S:
            # A scan of /proc per sample would cost the shared cores more than the sample.
            self._trees = {pid: [pid, *descendants(pid)] for pid in self.pids}
            self._trees_at = now
        for pid in self.pids:
            rss, pss = tree_memory(self._trees[pid])
            if rss == 0:
                continue  # the process is gone; keep what was sampled
            self.samples[pid].append((now, rss))
            self.pss_samples[pid].append((now, pss))

    def peak(self, pid: int) -> int:
        """Largest RSS sum sampled for ``pid`` and its descendants (0 if none)."""
        return max((rss for _, rss in self.samples.get(pid, [])), default=0)

    def peak_pss(self, pid: int) -> int:
        """Largest PSS sum sampled for ``pid`` and its descendants (0 if none)."""
        return max((pss for _, pss in self.pss_samples.get(pid, [])), default=0)


class CpuWindow:
    """CPU seconds a process and its descendants spend between ``start()`` and ``stop()``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._before = 0.0
        self.seconds = 0.0

    def start(self) -> None:
        """Remember the CPU time so far."""
        self._before = tree_cpu_seconds(self.pid)

    def stop(self) -> float:
        """CPU seconds since ``start()``."""
        self.seconds = tree_cpu_seconds(self.pid) - self._before
        return self.seconds
