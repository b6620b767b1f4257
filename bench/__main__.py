"""``python -m bench``: run ``bench.run`` on a snapshot of the sources.

The benchmark starts many daemons over most of an hour; a working tree edited meanwhile would
make its points measure different code. So ``s3batchd/`` and ``bench/`` are copied once, and
the run (with every daemon and server it starts) imports only that copy: it runs with the
copy as working directory and first on PYTHONPATH. The report names the commit and a hash of
the copied ``s3batchd`` sources.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=30
        )
    except OSError:
        return ""
    return done.stdout.strip()


def snapshot(target: Path) -> str:
    """Copy the sources to ``target``; a one-line description of what was copied."""
    ignore = shutil.ignore_patterns("__pycache__", "results", "*.pyc")
    for package in ("s3batchd", "bench"):
        shutil.copytree(REPO / package, target / package, ignore=ignore)
    digest = hashlib.sha256()
    for path in sorted((target / "s3batchd").rglob("*.py")):
        digest.update(path.relative_to(target).as_posix().encode() + b"\0" + path.read_bytes())
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    changed = _git("status", "--porcelain", "--", "s3batchd")
    local = " + local changes" if changed else ""
    return f"git {commit}{local}, s3batchd sources sha256 {digest.hexdigest()[:12]}"


def main() -> int:
    """Snapshot, run ``bench.run`` on it with this command's arguments, clean up."""
    source = Path(tempfile.mkdtemp(prefix="s3batchd-bench-src-"))
    try:
        description = snapshot(source)
        paths = [str(source), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "BENCH_SOURCE": description}
        args = sys.argv[1:]
        if "--out" not in args:
            args = ["--out", str(RESULTS), *args]
        command = [sys.executable, "-m", "bench.run", *args]
        with subprocess.Popen(command, cwd=source, env=env) as run:
            # Pass SIGTERM on: bench.run stops its servers before it exits.
            signal.signal(signal.SIGTERM, lambda signum, _frame: run.send_signal(signum))
            while True:
                try:
                    return run.wait()
                except KeyboardInterrupt:
                    continue  # the child got the same Ctrl-C; wait for its clean-up
    finally:
        shutil.rmtree(source, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
