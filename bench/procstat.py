"""What ``/proc`` says about a process: CPU seconds and resident memory, plus a sampler."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

_TICKS = os.sysconf("SC_CLK_TCK")
KIB = 1024
MIB = 1024 * KIB


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
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def memory_bytes(pid: int, name: str = "VmRSS") -> int:
    """A ``/proc/<pid>/status`` memory field in bytes: VmRSS (now) or VmHWM (peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * KIB
    raise KeyError(f"{name} not in /proc/{pid}/status")


@dataclass
class RssSampler:
    """Samples the RSS of some processes in a thread: ``with RssSampler([pid]) as s: ...``."""

    pids: list[int]
    interval_s: float = 0.25
    samples: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    """Per pid: (seconds since start, RSS bytes)."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: float = 0.0

    def __enter__(self) -> RssSampler:
        self._started = time.monotonic()
        self.samples = {pid: [] for pid in self.pids}
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
        for pid in self.pids:
            try:
                self.samples[pid].append((now, memory_bytes(pid)))
            except (OSError, KeyError):
                continue  # the process is gone; keep what was sampled

    def peak(self, pid: int) -> int:
        """Largest RSS sampled for ``pid`` (0 if none)."""
        return max((rss for _, rss in self.samples.get(pid, [])), default=0)


class CpuWindow:
    """CPU seconds a process spends between ``start()`` and ``stop()``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._before = 0.0
        self.seconds = 0.0

    def start(self) -> None:
        """Remember the CPU time so far."""
        self._before = cpu_seconds(self.pid)

    def stop(self) -> float:
        """CPU seconds since ``start()``."""
        self.seconds = cpu_seconds(self.pid) - self._before
        return self.seconds
