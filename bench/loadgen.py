"""The load generator: wrk (Debian package) driven by ``bench/put.lua``.

wrk is an event-loop C client: one thread of it sends tens of thousands of requests per second
on loopback, so on a 2-core machine it leaves the servers under test most of the CPU while
still saturating them. Its Lua hooks give unique keys per request, a request cap per run and
``delay()`` pacing for the runs below peak throughput.
"""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("put.lua")
_RESULT_PREFIX = "WRK_RESULT "
_THREAD_DONE = "WRK_THREAD_DONE"


@dataclass(frozen=True)
class LoadSpec:
    """One wrk run: PUTs of ``size`` bytes over ``connections`` keep-alive connections."""

    url: str
    """Base URL of the server, e.g. http://127.0.0.1:9000 (loopback only)."""
    size: int
    connections: int
    duration_s: float
    limit: int = 0
    """Stop after about this many responses (0: only ``duration_s`` bounds the run)."""
    delay_ms: float = 0
    """Mean pause per connection between a response and the next request (0: none)."""
    bucket: str = "bench"
    run: str = "run"
    """Key prefix of this run (keys are <run>/t<thread>/<n>)."""
    threads: int = 1


@dataclass(frozen=True)
class LoadResult:
    """What wrk measured, plus its own CPU time."""

    requests: int
    duration_s: float
    errors: int
    """Non-2xx answers, timeouts and socket errors."""
    latency_mean_ms: float
    latency_max_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    generator_cpu_s: float

    @property
    def throughput(self) -> float:
        """Requests per second."""
        return self.requests / self.duration_s if self.duration_s else 0.0


def wrk_binary() -> str:
    """Path of wrk; ``make bench`` installs it with apt-get when missing."""
    found = shutil.which("wrk")
    if found is None:
        raise FileNotFoundError("wrk not found: apt-get install -y wrk (or run `make bench`)")
    return found


def command(spec: LoadSpec) -> list[str]:
    """The wrk command line for ``spec``."""
    if not spec.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise ValueError(f"loopback targets only, not {spec.url}")
    threads = max(1, min(spec.threads, spec.connections))
    per_thread_limit = -(-spec.limit // threads) if spec.limit else 0
    return [
        wrk_binary(),
        f"-t{threads}",
        f"-c{spec.connections}",
        f"-d{max(1, round(spec.duration_s))}s",
        "--timeout",
        "30s",
        "-s",
        str(SCRIPT),
        spec.url,
        "--",
        str(spec.size),
        str(per_thread_limit),
        f"{spec.delay_ms:.3f}",
        spec.bucket,
        spec.run,
    ]


def run(spec: LoadSpec) -> LoadResult:
    """Run wrk to completion and parse its result line.

    wrk's main thread sleeps for the whole ``-d`` time even when every thread has stopped at
    its request cap; put.lua prints a line per stopped thread, and once all have, wrk gets
    SIGINT, which makes it finish and report at once.
    """
    args = command(spec)
    threads = int(args[1].removeprefix("-t"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as wrk:
        assert wrk.stdout is not None
        lines = []
        stopped = 0
        try:
            for line in wrk.stdout:
                lines.append(line)
                if line.startswith(_THREAD_DONE):
                    stopped += 1
                    if stopped == threads:
                        wrk.send_signal(signal.SIGINT)
        except BaseException:
            wrk.kill()  # interrupted: do not wait for the rest of its -d time
            raise
        code = wrk.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    output = "".join(lines)
    if code != 0:
        raise RuntimeError(f"wrk failed ({code}): {output.strip()}")
    return parse(output, generator_cpu_s=cpu)


def parse(output: str, *, generator_cpu_s: float) -> LoadResult:
    """The LoadResult in wrk's output (the line put.lua's ``done()`` prints)."""
    for line in output.splitlines():
        if line.startswith(_RESULT_PREFIX):
            raw = json.loads(line.removeprefix(_RESULT_PREFIX))
            break
    else:
        raise RuntimeError(f"no result line in wrk output:\n{output}")
    errors = sum(
        int(raw[name])
        for name in ("errors_connect", "errors_read", "errors_write", "errors_status")
    ) + int(raw["errors_timeout"])
    return LoadResult(
        requests=int(raw["requests"]),
        duration_s=(raw["limited_us"] or raw["duration_us"]) / 1e6,
        errors=errors,
        latency_mean_ms=raw["latency_mean_us"] / 1000,
        latency_max_ms=raw["latency_max_us"] / 1000,
        p50_ms=raw["latency_p50_us"] / 1000,
        p90_ms=raw["latency_p90_us"] / 1000,
        p99_ms=raw["latency_p99_us"] / 1000,
        p999_ms=raw["latency_p999_us"] / 1000,
        generator_cpu_s=max(0.0, generator_cpu_s),
    )
