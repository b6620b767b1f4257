"""A py-spy profile of the daemon under load: attach ``py-spy record`` (speedscope format) to
the running daemon while wrk loads it, then rank functions by the share of samples in which
they run themselves (self) or are on the stack (total). Idle threads are not sampled."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench import loadgen
from bench.servers import Daemon


@dataclass(frozen=True)
class HotFunction:
    """One function's share of the samples."""

    name: str
    """``function (file)`` with the path shortened to the package."""
    self_share: float
    total_share: float


@dataclass(frozen=True)
class Profile:
    """The summary of one recording."""

    path: Path
    samples: int
    """Stacks sampled (all threads)."""
    by_self: list[HotFunction]
    by_total: list[HotFunction]
    threads: dict[str, float]
    """Share of samples per thread name."""
    by_file: list[tuple[str, float]]
    """Self share per source file, largest first."""
    throughput: float
    """Requests/s while profiled (py-spy slows the process down a little)."""


def py_spy() -> str:
    """Path of py-spy (``pip install py-spy``; ``make bench`` installs it)."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise FileNotFoundError("py-spy not found: pip install py-spy")
    return found


def record(
    daemon: Daemon, load: loadgen.LoadSpec, output: Path, *, rate: int = 100, gil: bool = True
) -> Profile:
    """Profile ``daemon`` for the duration of ``load``. With ``gil``, only the thread holding
    the GIL is sampled: where the one core Python code can use goes. py-spy pauses the daemon
    for each sample (``--nonblocking`` tears stacks), so throughput drops while profiled."""
    args = [
        py_spy(),
        "record",
        "--pid",
        str(daemon.pid),
        "--rate",
        str(rate),
        "--duration",
        str(max(1, round(load.duration_s))),
        "--format",
        "speedscope",
        "--output",
        str(output),
        *(["--gil"] if gil else []),
    ]
    spy = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        result = loadgen.run(load)
    finally:
        _, errors = spy.communicate(timeout=120)
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed: {errors.decode(errors='replace')}")
    return summarize(output, throughput=result.throughput)


def short_file(path: str) -> str:
    """A source path from its package or the stdlib root on (.../site-packages/x/y.py ->
    x/y.py; a snapshot's or the work tree's .../s3batchd/y.py -> s3batchd/y.py)."""
    if "/s3batchd/" in path:
        return "s3batchd/" + path.rsplit("/s3batchd/", 1)[1]
    for marker in ("site-packages/", "/lib/python3.", "/work/main/"):
        if marker in path:
            rest = path.split(marker, 1)[1]
            return rest.split("/", 1)[1] if marker == "/lib/python3." else rest
    return path


def summarize(path: Path, *, throughput: float, top: int = 80) -> Profile:
    """Rank the functions of a py-spy speedscope file."""
    data = json.loads(path.read_text())
    names = [f"{f['name']} ({short_file(f.get('file', '?'))})" for f in data["shared"]["frames"]]
    self_weight: Counter[str] = Counter()
    total_weight: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    files: Counter[str] = Counter()
    # Weights are floats (py-spy writes seconds): Counter of float values.
    samples = 0
    total = 0.0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            samples += 1
            total += weight
            threads[profile["name"]] += weight
            if stack:
                leaf = names[stack[-1]]  # speedscope stacks end at the leaf
                self_weight[leaf] += weight
                files[leaf.rsplit(" (", 1)[-1].rstrip(")")] += weight
            for name in {names[i] for i in stack}:
                total_weight[name] += weight

    def ranked(weights: Counter[str]) -> list[HotFunction]:
        return [
            HotFunction(name, self_weight[name] / total, total_weight[name] / total)
            for name, _ in weights.most_common(top)
        ]

    return Profile(
        path=path,
        samples=samples,
        by_self=ranked(self_weight),
        by_total=ranked(total_weight),
        threads={name: weight / total for name, weight in threads.most_common()},
        by_file=[(name, weight / total) for name, weight in files.most_common(top)],
        throughput=throughput,
    )
