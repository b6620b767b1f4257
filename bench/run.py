"""Run the whole benchmark of issue #8 and write ``bench/results/``.

    .venv/bin/python -m bench                    # everything (about 45 minutes), on a copy
    .venv/bin/python -m bench --sustained-s 120  # a shorter sustained run
    .venv/bin/python -m bench --skip sustained,recovery --sizes 4096 --concurrency 32

(``python -m bench`` runs this module on a snapshot of the sources: see bench/__main__.py.)

Everything listens on 127.0.0.1 only; every load run is bounded in time and request count.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import FrameType

from bench import (
    loadgen,
    matrix,
    paced,
    procstat,
    profile,
    recovery,
    report,
    sustained,
    upload,
)
from bench.report import Results
from bench.servers import Daemon, DaemonSettings, Seaweed
from bench.targets import ALL, FSYNC, NONE, TARGET_CONNECTIONS, TARGET_SIZE, running

logger = logging.getLogger("bench")
PHASES = ("matrix", "paced", "profile", "recovery", "upload", "sustained")
RESULTS_DIR = Path(__file__).with_name("results")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def _names(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [part for part in text.split(",") if part]
        unknown = set(names) - set(choices)
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(sorted(unknown))}")
        return names

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line options (every bound of the run is one)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add = parser.add_argument
    add("--sizes", type=_ints, default=[1024, 4096, 16384, 262144], help="object sizes, bytes")
    add("--concurrency", type=_ints, default=[8, 32, 128], help="connection counts")
    add("--targets", type=_names(ALL), default=list(ALL), help="configurations compared")
    add("--duration-s", type=float, default=15, help="measured seconds per point")
    add("--warmup-s", type=float, default=3, help="unmeasured seconds before each point")
    add("--max-requests", type=int, default=1_000_000, help="request cap per point")
    add("--paced-s", type=float, default=15, help="measured seconds at 50%% of peak")
    add("--sustained-s", type=float, default=600, help="length of the sustained run")
    add("--window-s", type=float, default=10, help="window of the sustained run")
    add("--recovery-bytes", type=int, default=1 << 30, help="spool size for the recovery test")
    add("--recovery-object-size", type=int, default=16384, help="object size filling it")
    add("--no-cold-cache", action="store_true", help="do not drop the page cache for recovery")
    add("--upload-reps", type=int, default=9, help="measured uploads per client")
    add("--profile-s", type=float, default=20, help="seconds of py-spy recording")
    add("--skip", type=_names(PHASES), default=[], help=f"phases to skip: {','.join(PHASES)}")
    add("--out", type=Path, default=RESULTS_DIR, help="where the report goes")
    add("--work-dir", type=Path, help="scratch directory (default: a new temporary one)")
    add("--keep-work", action="store_true", help="keep the scratch directory")
    return parser.parse_args(argv)


def _version(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=30)
    except OSError as exc:
        return f"unavailable ({exc})"
    return (
        (done.stdout or done.stderr).strip().splitlines()[0] if done.stdout or done.stderr else ""
    )


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def describe(args: argparse.Namespace) -> dict[str, str]:
    """The setup block of the report."""
    from s3batchd import __version__
    from s3batchd.cli.seaweed import weed_binary

    source = os.environ.get("BENCH_SOURCE", "the working tree as it was at each start")
    return {
        "machine": f"{os.cpu_count()} CPUs ({_cpu_model()}), Linux {platform.release()}, "
        "generator and servers on the same cores",
        "software": f"s3batchd {__version__} ({source}), Python {platform.python_version()}, "
        f"{_version(['wrk', '-v'])}, SeaweedFS {_version([weed_binary(), 'version'])}",
        "generator": "wrk (Debian package), 1 thread, bench/put.lua: unsigned path-style PUTs of "
        "pseudo-random bodies, a new key per request, keep-alive connections",
        "points": f"sizes {args.sizes}, concurrency {args.concurrency}, {args.warmup_s:g} s "
        f"warm-up then {args.duration_s:g} s (at most {args.max_requests:,} PUTs) per point, "
        "each Python server started fresh per point, SeaweedFS shared by the whole run",
        "s3batchd settings": "defaults (batch.linger_ms 2000, max_records 10000, max_bytes 64 "
        "MiB, upload.concurrency 2, multipart from 16 MiB), auth none, admin port on",
    }


def _memory(daemon: Daemon | None) -> tuple[int | None, int | None, int | None]:
    """Peak RSS of a daemon and of its upload process (if it has one), and the PSS of both
    summed, while both run."""
    if daemon is None:
        return None, None, None
    children = procstat.children(daemon.pid)
    _, pss = procstat.tree_memory([daemon.pid, *children])
    return (
        procstat.memory_bytes(daemon.pid, "VmHWM"),
        max(procstat.memory_bytes(pid, "VmHWM") for pid in children) if children else None,
        pss,
    )


class Bench:
    """One benchmark run: shared SeaweedFS, results saved after every phase."""

    def __init__(self, args: argparse.Namespace, work: Path, seaweed: Seaweed) -> None:
        self.args = args
        self.work = work
        self.seaweed = seaweed
        self.results = Results(started=time.strftime("%Y-%m-%d %H:%M %Z"), setup=describe(args))
        self.sealed_spool: Path | None = None

    def save(self) -> Path:
        """Write the report with what is measured so far."""
        return report.write(self.results, self.args.out)

    def point_spec(self) -> matrix.PointSpec:
        """Settings shared by the points."""
        return matrix.PointSpec(
            duration_s=self.args.duration_s,
            warmup_s=self.args.warmup_s,
            max_requests=self.args.max_requests,
            daemon=DaemonSettings(),
        )

    def run_matrix(self) -> None:
        """Every target at every size and concurrency."""
        for size in self.args.sizes:
            for connections in self.args.concurrency:
                for target in self.args.targets:
                    point = matrix.measure(
                        target,
                        size,
                        connections,
                        spec=self.point_spec(),
                        seaweed=self.seaweed,
                        work_dir=self.work / "points",
                    )
                    shutil.rmtree(self.work / "points", ignore_errors=True)
                    logger.info(
                        "%-9s %6d B c=%-3d %8.0f PUT/s p99 %7.2f ms RSS %5.0f MiB errors %d",
                        target,
                        size,
                        connections,
                        point.throughput,
                        point.p99_ms,
                        point.peak_rss_bytes / 2**20,
                        point.errors,
                    )
                    self.results.points.append(point)
                self.save()

    def peak(self, target: str) -> float:
        """Saturated PUT/s of ``target`` at the target size and concurrency."""
        point = self.results.point(target, TARGET_SIZE, TARGET_CONNECTIONS)
        if point is None:
            spec = self.point_spec()
            point = matrix.measure(
                target,
                TARGET_SIZE,
                TARGET_CONNECTIONS,
                spec=spec,
                seaweed=self.seaweed,
                work_dir=self.work / "peak",
            )
            self.results.points.append(point)
        return point.throughput

    def run_paced(self) -> None:
        """Latency at 50% of each target's peak (s3batchd's also with uploads from a child
        process, at the same rate)."""
        for target in self.args.targets:
            peak = self.peak(target)
            variants = (False, True) if target in (NONE, FSYNC) else (False,)
            for child in variants:
                self.results.paced.append(self._paced_point(target, peak, child_processes=child))
        self.save()

    def _paced_point(self, target: str, peak: float, *, child_processes: bool) -> paced.PacedPoint:
        variant = "-child" if child_processes else ""
        with running(
            target,
            seaweed=self.seaweed,
            work_dir=self.work / "paced" / f"{target}{variant}",
            daemon_settings=DaemonSettings(child_processes=child_processes),
        ) as live:
            warm = loadgen.LoadSpec(
                url=live.url,
                size=TARGET_SIZE,
                connections=TARGET_CONNECTIONS,
                duration_s=self.args.warmup_s,
                run=f"paced-warm{variant}",
            )
            loadgen.run(warm)
            result = paced.measure(
                f"{target}{variant}",
                live.url,
                size=TARGET_SIZE,
                connections=TARGET_CONNECTIONS,
                peak=peak,
                fraction=0.5,
                duration_s=self.args.paced_s,
                lag=(
                    partial(live.daemon.loop_lag, paced.STALL_S)
                    if live.daemon is not None
                    else None
                ),
            )
            daemon_rss, child_rss, pss = _memory(live.daemon)
            result = dataclasses.replace(
                result,
                target=target,
                child_processes=child_processes,
                daemon_rss_bytes=daemon_rss,
                upload_process_rss_bytes=child_rss,
                pss_bytes=pss,
            )
        logger.info(
            "paced %-9s %6.0f of %6.0f PUT/s: p50 %.2f p99 %.2f ms%s",
            target,
            result.throughput,
            peak,
            result.p50_ms,
            result.p99_ms,
            " (uploads from a child process)" if child_processes else "",
        )
        return result

    def run_profile(self) -> None:
        """py-spy of the daemon (durability none) at the target size and concurrency."""
        settings = DaemonSettings(durability=NONE, upstream_url=self.seaweed.url)
        daemon = Daemon.start(self.work / "profile", settings)
        try:
            load = loadgen.LoadSpec(
                url=daemon.url,
                size=TARGET_SIZE,
                connections=TARGET_CONNECTIONS,
                duration_s=self.args.warmup_s,
                run="profile-warm",
            )
            loadgen.run(load)
            measured = loadgen.LoadSpec(
                **{**vars(load), "duration_s": self.args.profile_s, "run": "profile"}
            )
            output = self.args.out / "profile-none-4k-c32.speedscope.json"
            self.args.out.mkdir(parents=True, exist_ok=True)
            self.results.profile = profile.record(daemon, measured, output)
        finally:
            daemon.stop()
        logger.info("profile written to %s", self.results.profile.path)
        self.save()

    def run_recovery(self) -> None:
        """Start-up time on a spool of ``--recovery-bytes``, sealed and open."""
        cold = not self.args.no_cold_cache and recovery.can_drop_page_cache()
        for scenario, settings in recovery.scenarios().items():
            result, spool = recovery.measure(
                self.work / "recovery" / scenario,
                scenario,
                settings,
                target_bytes=self.args.recovery_bytes,
                object_size=self.args.recovery_object_size,
                cold=cold,
            )
            logger.info("recovery %s: %s", scenario, result)
            self.results.recovery.append(result)
            if scenario == "sealed":
                self.sealed_spool = spool
            else:
                shutil.rmtree(self.work / "recovery" / scenario, ignore_errors=True)
        self.save()

    def sealed_tar(self) -> Path:
        """The largest sealed tar of a spool filled with the default batch limits."""
        if self.sealed_spool is None:
            settings = recovery.scenarios()["sealed"]
            self.sealed_spool, _ = recovery.fill(
                self.work / "upload-fill",
                settings,
                target_bytes=settings.max_bytes + settings.max_bytes // 4,
                object_size=self.args.recovery_object_size,
            )
        tars = [p for p in recovery.spool_files(self.sealed_spool) if p.suffix == ".tar"]
        return max(tars, key=lambda p: p.stat().st_size)

    def run_upload(self) -> None:
        """s3batchd's uploader against boto3 upload_file."""
        result = upload.compare(
            self.sealed_tar(),
            self.work / "upload",
            endpoint_url=self.seaweed.url,
            reps=self.args.upload_reps,
        )
        logger.info(
            "upload: uploader %.0f MiB/s, boto3 %.0f MiB/s",
            result.uploader_mib_s,
            result.boto3_mib_s,
        )
        self.results.upload = result
        self.save()

    def run_sustained(self) -> None:
        """s3batchd (durability none) for ``--sustained-s``."""
        settings = DaemonSettings(durability=NONE, upstream_url=self.seaweed.url)
        daemon = Daemon.start(self.work / "sustained", settings)
        try:
            result = sustained.measure(
                daemon,
                size=TARGET_SIZE,
                connections=TARGET_CONNECTIONS,
                duration_s=self.args.sustained_s,
                window_s=self.args.window_s,
            )
        finally:
            daemon.stop()
        logger.info("sustained: %s windows, thirds %s", len(result.windows), result.thirds())
        self.results.sustained = result
        self.save()


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    """Run the selected phases and write the report."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("s3batchd", "botocore", "boto3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # the uploader runs in-process
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the servers started so far are stopped, not orphaned.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    loadgen.wrk_binary()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="s3batchd-bench-"))
    seaweed = Seaweed.start(work / "seaweedfs")
    try:
        bench = Bench(args, work, seaweed)
        for phase in PHASES:
            if phase not in args.skip:
                logger.info("phase %s", phase)
                getattr(bench, f"run_{phase}")()
        logger.info("report: %s", bench.save())
    finally:
        seaweed.stop()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
