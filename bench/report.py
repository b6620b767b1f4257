"""The report: ``results.json`` (raw), ``report.md`` (tables of ratios, targets) and PNG charts
under ``bench/results/``."""

from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench.matrix import Point
from bench.paced import PacedPoint
from bench.procstat import MIB
from bench.profile import Profile
from bench.recovery import Recovery
from bench.sustained import Sustained
from bench.targets import (
    CEILING,
    CPU_US_PER_PUT,
    FSYNC,
    LABELS,
    MEMORY_MIB,
    NONE,
    P99_MS_AT_HALF,
    SEAWEED,
    SHARE_OF_CEILING,
    TARGET_CONNECTIONS,
    TARGET_SIZE,
    TIMES_SEAWEED,
    UPLOAD_SHARE,
)
from bench.upload import UploadComparison

#: Label suffix of s3batchd measured with ``upload.child_processes``.
CHILD_NOTE = ", upload.child_processes"

RSS_LIMIT_BYTES = MEMORY_MIB * MIB


@dataclass
class Results:
    """Everything one benchmark run measured."""

    started: str
    setup: dict[str, str]
    points: list[Point] = field(default_factory=list)
    paced: list[PacedPoint] = field(default_factory=list)
    sustained: Sustained | None = None
    upload: UploadComparison | None = None
    recovery: list[Recovery] = field(default_factory=list)
    profile: Profile | None = None

    def point(self, target: str, size: int, connections: int) -> Point | None:
        """The point measured for this target, size and concurrency, if any."""
        for point in self.points:
            if (point.target, point.size, point.connections) == (target, size, connections):
                return point
        return None


def write(results: Results, out: Path) -> Path:
    """Write results.json, report.md and the charts; the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(dataclasses.asdict(results), indent=2, default=str)
    (out / "results.json").write_text(raw + "\n")
    charts = _charts(results, out)
    report = out / "report.md"
    report.write_text(render(results, charts))
    return report


def _size(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float, base: Point | None) -> str:
    if base is None or not base.throughput:
        return "-"
    return f"{value / base.throughput:.2f}"


def render(results: Results, charts: list[str]) -> str:
    """The Markdown report."""
    lines = [f"# s3batchd benchmark ({results.started})", ""]
    lines += [f"- **{name}**: {value}" for name, value in results.setup.items()]
    lines += ["", *_targets(results), *_comparison(results), *_paced(results)]
    lines += [*_sustained(results), *_upload(results), *_recovery(results), *_profile(results)]
    lines += ["## Charts", ""] + [f"![{name}]({name})" for name in charts] + [""]
    return "\n".join(lines)


def _comparison(results: Results) -> list[str]:
    lines = [
        "## Throughput, latency and cost",
        "",
        "Ratios are PUT/s against (a) the do-nothing ceiling and (d) SeaweedFS direct at the "
        "same size and concurrency. Peak RSS: VmHWM of the server process (s3batchd: of the "
        "daemon plus that of its upload process; SeaweedFS: largest sampled RSS of the shared "
        "`weed mini`). Peak PSS: the largest sum of the processes' PSS sampled every 0.25 s, "
        "which counts the pages they share (Python, its libraries) once, as a container's "
        "memory cgroup does. CPU: the server's processes only; for s3batchd, "
        "`upstream CPU` is what SeaweedFS spent meanwhile (receiving the batches). Upstream "
        "requests: from the daemon's `/metrics` (tar, parts, index) per object uploaded. "
        "Other load: share of all cores busy with processes outside the benchmark meanwhile.",
        "",
    ]
    groups = sorted({(p.size, p.connections) for p in results.points})
    for size, connections in groups:
        ceiling = results.point(CEILING, size, connections)
        direct = results.point(SEAWEED, size, connections)
        lines += [
            f"### {_size(size)} objects, concurrency {connections}",
            "",
            "| config | PUT/s | x (a) | x (d) | p50 ms | p99 ms | p99.9 ms | peak RSS MiB "
            "| peak PSS MiB | CPU s / 1k PUTs | upstream CPU s / 1k | upstream req / 1k obj "
            "| obj / batch | other load | errors |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for point in results.points:
            if (point.size, point.connections) != (size, connections):
                continue
            lines.append(
                f"| {LABELS[point.target]} | {point.throughput:,.0f} "
                f"| {_ratio(point.throughput, ceiling)} | {_ratio(point.throughput, direct)} "
                f"| {point.p50_ms:.2f} | {point.p99_ms:.2f} | {point.p999_ms:.2f} "
                f"| {point.peak_rss_bytes / MIB:.0f} | {point.peak_pss_bytes / MIB:.0f} "
                f"| {point.cpu_s_per_1000:.3f} "
                f"| {_num(point.upstream_cpu_s_per_1000, 3)} "
                f"| {_num(point.upstream_requests_per_1000)} "
                f"| {_num(point.objects_per_batch, 0)} | {point.other_cpu_share:.0%} "
                f"| {point.errors} |"
            )
        lines.append("")
    return lines


def _check(name: str, value: float | None, goal: str, ok: bool | None) -> str:
    verdict = "-" if ok is None else ("**pass**" if ok else "**FAIL**")
    return f"| {name} | {_num(value)} | {goal} | {verdict} |"


def _targets(results: Results) -> list[str]:
    size, conns = TARGET_SIZE, TARGET_CONNECTIONS
    ceiling = results.point(CEILING, size, conns)
    direct = results.point(SEAWEED, size, conns)
    rows = []
    for target, share in SHARE_OF_CEILING.items():
        point = results.point(target, size, conns)
        vs_ceiling = point.throughput / ceiling.throughput if point and ceiling else None
        vs_direct = point.throughput / direct.throughput if point and direct else None
        rows.append(
            _check(
                f"{target}: PUT/s ÷ ceiling",
                vs_ceiling,
                f"≥ {share}",
                None if vs_ceiling is None else vs_ceiling >= share,
            )
        )
        rows.append(
            _check(
                f"{target}: PUT/s ÷ SeaweedFS direct",
                vs_direct,
                f"≥ {TIMES_SEAWEED:g}",
                None if vs_direct is None else vs_direct >= TIMES_SEAWEED,
            )
        )
        limit_us = CPU_US_PER_PUT.get(target)
        if limit_us is not None:
            cpu_us = point.cpu_s_per_1000 * 1000 if point else None
            rows.append(
                _check(
                    f"{target}: server CPU µs per PUT",
                    cpu_us,
                    f"≤ {limit_us:g} µs",
                    None if cpu_us is None else cpu_us <= limit_us,
                )
            )
    for (target, limit), child in itertools.product(P99_MS_AT_HALF.items(), (False, True)):
        paced = next(
            (p for p in results.paced if p.target == target and p.child_processes == child), None
        )
        if child and paced is None:
            continue
        p99 = paced.p99_ms if paced else None
        rows.append(
            _check(
                f"{target}{CHILD_NOTE if child else ''}: p99 ms at 50% of peak",
                p99,
                f"≤ {limit:g} ms",
                None if p99 is None else p99 <= limit,
            )
        )
    ours = [p for p in results.points if p.target in (NONE, FSYNC)]
    sustained = results.sustained
    pss = [p.peak_pss_bytes for p in ours]
    rss = [p.peak_rss_bytes for p in ours]
    if sustained is not None:
        pss += [pss_bytes for _, pss_bytes in sustained.pss_samples]
        rss += [rss_bytes for _, rss_bytes in sustained.rss_samples]
    peak = max(pss) / MIB if pss else None
    rows.append(
        _check(
            "s3batchd peak memory MiB: PSS of its processes summed (every point and the "
            "sustained run)",
            peak,
            f"≤ {MEMORY_MIB} MiB",
            None if peak is None else peak * MIB <= RSS_LIMIT_BYTES,
        )
    )
    rows.append(
        _check(
            "the same as RSS summed (pages shared by its processes counted once per process)",
            max(rss) / MIB if rss else None,
            "-",
            None,
        )
    )
    upload = results.upload
    rows.append(
        _check(
            "sealed-batch upload ÷ boto3 upload_file",
            upload.ratio if upload else None,
            f"≥ {UPLOAD_SHARE}",
            None if upload is None else upload.ratio >= UPLOAD_SHARE,
        )
    )
    return [
        f"## Targets ({_size(size)} objects, concurrency {conns})",
        "",
        "| target | measured | goal | verdict |",
        "|---|--:|---|---|",
        *rows,
        "",
    ]


def _paced(results: Results) -> list[str]:
    if not results.paced:
        return []
    lines = [
        "## Latency at 50% of peak throughput",
        "",
        "Each connection pauses between a response and its next request (wrk Lua `delay()`, "
        "uniform around the mean shown, calibrated in two short runs) so the aggregate rate is "
        "half the saturating run's. Closed loop: pauses are not counted as latency. Loop "
        "stalls: the daemon's `s3batchd_event_loop_lag_seconds` over the measured run, "
        "wake-ups late by 5 ms or more per second and milliseconds of lateness per second. "
        f"s3batchd is measured twice, the second time{CHILD_NOTE}: batches uploaded from a "
        "child process instead of the daemon's threads. Peak RSS: VmHWM of the daemon and of "
        "its upload process at the end of the run; PSS: of both together at the end of the "
        "run (shared pages counted once).",
        "",
        "| config | size | conns | peak PUT/s | wanted | got | pause ms | p50 ms | p99 ms "
        "| p99.9 ms | errors | loop stalls >= 5 ms /s | loop lag ms/s | peak RSS MiB "
        "| upload process RSS MiB | PSS MiB |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in results.paced:
        stalls = "-" if p.stalls_per_s is None else f"{p.stalls_per_s:.1f}"
        lag = "-" if p.lag_ms_per_s is None else f"{p.lag_ms_per_s:.1f}"
        rss = "-" if p.daemon_rss_bytes is None else f"{p.daemon_rss_bytes / MIB:.0f}"
        child_rss = (
            "-" if p.upload_process_rss_bytes is None else f"{p.upload_process_rss_bytes / MIB:.0f}"
        )
        label = LABELS[p.target] + (CHILD_NOTE if p.child_processes else "")
        pss = "-" if p.pss_bytes is None else f"{p.pss_bytes / MIB:.0f}"
        lines.append(
            f"| {label} | {_size(p.size)} | {p.connections} | {p.peak:,.0f} "
            f"| {p.wanted:,.0f} | {p.throughput:,.0f} | {p.delay_ms:.1f} | {p.p50_ms:.2f} "
            f"| {p.p99_ms:.2f} | {p.p999_ms:.2f} | {p.errors} | {stalls} | {lag} | {rss} "
            f"| {child_rss} | {pss} |"
        )
    return [*lines, ""]


def _sustained(results: Results) -> list[str]:
    run = results.sustained
    if run is None:
        return []
    first, last = run.thirds()
    rss = [w.rss_bytes / MIB for w in run.windows]
    pss = max((p for _, p in run.pss_samples), default=0) / MIB
    return [
        f"## Sustained run ({run.server}, {_size(run.size)}, concurrency {run.connections})",
        "",
        f"{run.duration_s:.0f} s in {len(run.windows)} windows; mean PUT/s of the first third "
        f"{first:,.0f}, of the last third {last:,.0f} (ratio {last / first:.2f}: "
        f"{'flat' if run.throughput_flat else 'NOT flat'}, ≥ 0.9 wanted). RSS (of the daemon's "
        "processes, summed) after the first "
        f"window {rss[0]:.0f} MiB, at the end {rss[-1]:.0f} MiB, largest {max(rss):.0f} MiB "
        f"(growth {run.rss_growth_bytes / MIB:+.1f} MiB: "
        f"{'flat' if run.rss_flat else 'NOT flat'}, ≤ 20 MiB wanted); largest PSS "
        f"{pss:.0f} MiB. Errors: "
        f"{sum(w.errors for w in run.windows)}. Upstream requests per 1,000 objects: "
        f"{_num(run.upstream_requests_per_1000)}.",
        "",
    ]


def _runs(seconds: list[float]) -> str:
    return ", ".join(f"{s:.2f}" for s in sorted(seconds))


def _upload(results: Results) -> list[str]:
    up = results.upload
    if up is None:
        return []
    return [
        "## Upload of a sealed batch",
        "",
        f"One sealed tar of {up.tar_bytes / MIB:.1f} MiB ({up.records:,} objects), uploaded "
        f"{len(up.uploader_s)} times by each client, alternating.",
        "",
        "| client | median s | MiB/s | requests per upload | every run, s |",
        "|---|--:|--:|--:|---|",
        f"| s3batchd uploader (tar + index, default [upload]) | "
        f"{statistics.median(up.uploader_s):.3f} | {up.uploader_mib_s:.0f} "
        f"| {up.uploader_requests_per_batch:.0f} | {_runs(up.uploader_s)} |",
        f"| boto3 upload_file (default TransferConfig) | "
        f"{statistics.median(up.boto3_s):.3f} | {up.boto3_mib_s:.0f} | - "
        f"| {_runs(up.boto3_s)} |",
        "",
        f"Ratio {up.ratio:.2f} (target ≥ {UPLOAD_SHARE}), of the medians. On this machine the "
        "times of both clients fall in two groups a factor of 2 or more apart (SeaweedFS and "
        "the shared disk), so the median of few runs can land in either group: every run is "
        "listed.",
        "",
    ]


def _recovery(results: Results) -> list[str]:
    if not results.recovery:
        return []
    lines = [
        "## Start-up recovery of a large spool",
        "",
        "Time from starting `s3batchd serve` until `/healthz` answers, on a copy of a spool "
        "left by a daemon killed with SIGKILL (upstream unreachable, so nothing was uploaded).",
        "",
        "| spool | bytes | files | objects | batches recovered | start, warm cache s "
        "| start, cold cache s | start, empty spool s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results.recovery:
        lines.append(
            f"| {r.scenario} | {r.spool_bytes / (1 << 30):.2f} GiB | {r.files} | {r.objects:,} "
            f"| {r.batches_recovered} | {r.ready_s:.2f} | {_num(r.ready_cold_s)} "
            f"| {r.empty_ready_s:.2f} |"
        )
    return [*lines, ""]


def _profile(results: Results) -> list[str]:
    prof = results.profile
    if prof is None:
        return []
    threads = ", ".join(f"{name} {share:.0%}" for name, share in prof.threads.items())
    lines = [
        "## Profile: s3batchd, durability none, 4 KiB, concurrency 32",
        "",
        f"py-spy record --gil (only the thread holding the GIL), {prof.samples} samples, "
        f"speedscope file `{prof.path.name}`; {prof.throughput:,.0f} PUT/s while profiled. "
        f"Threads: {threads}.",
        "",
        "### Top functions by self time",
        "",
        "| # | self | total | function |",
        "|--:|--:|--:|---|",
    ]
    for rank, hot in enumerate(prof.by_self[:20], 1):
        lines.append(f"| {rank} | {hot.self_share:.1%} | {hot.total_share:.1%} | `{hot.name}` |")
    lines += ["", "### Self time by source file", "", "| self | file |", "|--:|---|"]
    lines += [f"| {share:.1%} | `{name}` |" for name, share in prof.by_file[:15]]
    root = max((hot.total_share for hot in prof.by_total), default=0.0)
    inner = [hot for hot in prof.by_total if hot.total_share < 0.8 * root]
    lines += ["", "### Top functions by total time (below the event loop)", ""]
    lines += ["| total | self | function |", "|--:|--:|---|"]
    lines += [f"| {h.total_share:.1%} | {h.self_share:.1%} | `{h.name}` |" for h in inner[:20]]
    return [*lines, ""]


def _charts(results: Results, out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        return []  # the tables are the report; charts need the bench extra (matplotlib)
    from bench import charts

    names = []
    if results.points:
        names.append(charts.comparison(results.points, out / "comparison.png"))
        if len({p.connections for p in results.points}) > 1:
            names.append(charts.concurrency(results.points, out / "concurrency.png"))
    if results.sustained is not None:
        names.append(charts.sustained(results.sustained, out / "sustained.png"))
    return names
