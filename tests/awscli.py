"""aws-cli, run as an application would run it against the daemon."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def aws(endpoint_url: str, *args: str, cwd: Path | None = None, timeout: float = 60) -> str:
    """Run ``aws --endpoint-url ENDPOINT_URL ARGS...`` with the application's credentials;
    its standard output (the test fails with its standard error if it fails)."""
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "app-key",
        "AWS_SECRET_ACCESS_KEY": "app-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    command = [str(Path(sys.executable).parent / "aws"), "--endpoint-url", endpoint_url, *args]
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, check=False, cwd=cwd, timeout=timeout
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
