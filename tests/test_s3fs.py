"""s3fs (fsspec) through the daemon, from its own virtualenv (see the Makefile)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import Daemon

S3FS_PYTHON = Path(__file__).resolve().parents[1] / ".venv-s3fs" / "bin" / "python"

SCRIPT = """
import json, sys
import s3fs
endpoint, bucket = sys.argv[1], sys.argv[2]
fs = s3fs.S3FileSystem(key="app-key", secret="app-secret",
                       client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"})
fs.pipe(f"{bucket}/fs/piped.txt", b"piped by s3fs")
with fs.open(f"{bucket}/fs/opened.txt", "wb") as handle:
    handle.write(b"written through open()")
result = {
    "piped": fs.cat(f"{bucket}/fs/piped.txt").decode(),
    "opened": fs.cat(f"{bucket}/fs/opened.txt").decode(),
    "listed": sorted(fs.ls(f"{bucket}/fs/", refresh=True)),
    "size": fs.info(f"{bucket}/fs/piped.txt")["size"],
}
print(json.dumps(result))
"""


def test_s3fs_pipe_open_cat_ls(daemon: Daemon, bucket: str) -> None:
    assert S3FS_PYTHON.exists(), "run `make install` (it creates .venv-s3fs)"
    completed = subprocess.run(
        [str(S3FS_PYTHON), "-c", SCRIPT, daemon.url, bucket],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result == {
        "piped": "piped by s3fs",
        "opened": "written through open()",
        "listed": [f"{bucket}/fs/opened.txt", f"{bucket}/fs/piped.txt"],
        "size": len("piped by s3fs"),
    }
