"""PNG charts of a run (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from bench.matrix import Point
from bench.procstat import MIB
from bench.sustained import Sustained
from bench.targets import ALL, LABELS

CHART_CONNECTIONS = 32


def _size(size: int) -> str:
    return f"{size // 1024} KiB"


def comparison(points: list[Point], path: Path) -> str:
    """Throughput and p99 by object size and configuration at one concurrency."""
    conns = CHART_CONNECTIONS
    if not any(p.connections == conns for p in points):
        conns = points[0].connections
    chosen = [p for p in points if p.connections == conns]
    sizes = sorted({p.size for p in chosen})
    targets = [t for t in ALL if any(p.target == t for p in chosen)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
    width = 0.8 / len(targets)
    for number, target in enumerate(targets):
        xs, puts, p99 = [], [], []
        for index, size in enumerate(sizes):
            point = next((p for p in chosen if (p.target, p.size) == (target, size)), None)
            if point is not None:
                xs.append(index + number * width)
                puts.append(point.throughput)
                p99.append(point.p99_ms)
        top.bar(xs, puts, width, label=LABELS[target])
        bottom.bar(xs, p99, width, label=LABELS[target])
    top.set_ylabel("PUT/s")
    top.set_title(f"PUT throughput and p99 latency, concurrency {conns}, loopback, 2 cores")
    top.legend()
    bottom.set_ylabel("p99 latency (ms, log)")
    bottom.set_yscale("log")
    bottom.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))], [_size(s) for s in sizes])
    bottom.set_xlabel("object size")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def concurrency(points: list[Point], path: Path) -> str:
    """Throughput against concurrency, one line per configuration, one panel per size."""
    sizes = sorted({p.size for p in points})
    fig, axes = plt.subplots(1, len(sizes), figsize=(4 * len(sizes), 4), squeeze=False)
    for axis, size in zip(axes[0], sizes, strict=True):
        for target in ALL:
            line = sorted(
                (p.connections, p.throughput)
                for p in points
                if p.target == target and p.size == size
            )
            if line:
                axis.plot([c for c, _ in line], [t for _, t in line], "o-", label=LABELS[target])
        axis.set_xscale("log", base=2)
        axis.set_title(_size(size))
        axis.set_xlabel("connections")
        axis.set_ylabel("PUT/s")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def sustained(run: Sustained, path: Path) -> str:
    """Throughput per window and RSS over the sustained run."""
    fig, left = plt.subplots(figsize=(9, 4))
    left.plot([w.start_s for w in run.windows], [w.throughput for w in run.windows], "o-")
    left.set_xlabel("seconds")
    left.set_ylabel("PUT/s per window", color="C0")
    left.set_ylim(bottom=0)
    right = left.twinx()
    right.plot([t for t, _ in run.rss_samples], [r / MIB for _, r in run.rss_samples], "C1")
    right.set_ylabel("RSS MiB", color="C1")
    right.set_ylim(bottom=0)
    left.set_title(f"Sustained: {run.server}, {_size(run.size)}, concurrency {run.connections}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name
