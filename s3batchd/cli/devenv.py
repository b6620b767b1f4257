"""The files ``s3batchd dev`` (``make run``) writes into its data directory at every start.

``config.toml`` holds the daemon's settings (port, spool, the embedded SeaweedFS endpoint), so
the client-side commands (``get``, ``ls``, ``extract``, ``reindex``, ``status``) find the same
catalog and endpoint through ``S3BATCHD_CONFIG``. ``env.sh`` exports what a second shell needs
to talk to both servers with no further flags: ``source .local/env.sh``.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

CONFIG_NAME = "config.toml"
ENV_NAME = "env.sh"
REGION = "us-east-1"


@dataclass(frozen=True)
class DevEnvironment:
    """What ``env.sh`` exports."""

    daemon_url: str
    """The daemon (``AWS_ENDPOINT_URL``: aws-cli and boto3 use it without flags)."""
    upstream_url: str
    """The embedded SeaweedFS, where the batches land (``UPSTREAM_URL``)."""
    access_key: str
    secret_key: str
    """Credentials SeaweedFS accepts; the daemon accepts any (``auth.mode = "none"``)."""
    config: Path
    """The settings file the daemon runs with (``S3BATCHD_CONFIG``)."""
    bin_dir: Path
    """Put first on ``PATH``: the virtual environment's ``s3batchd`` and ``aws``."""


def write_config(data_dir: Path, *, port: int, upstream_url: str) -> Path:
    """Write ``<data_dir>/config.toml``: the daemon's port, spool and upstream endpoint."""
    data_dir.mkdir(parents=True, exist_ok=True)
    spool = (data_dir / "spool").absolute()
    path = data_dir / CONFIG_NAME
    # JSON strings are TOML basic strings for everything a path or URL holds here.
    path.write_text(
        "# Written by `s3batchd dev` (make run) at every start: the settings it runs the daemon\n"
        "# with. The client-side commands read it through S3BATCHD_CONFIG (see env.sh).\n"
        f"[server]\nport = {port}\n\n"
        f"[spool]\ndir = {json.dumps(str(spool))}\n\n"
        f"[upstream]\nendpoint_url = {json.dumps(upstream_url)}\n",
        encoding="utf-8",
    )
    return path


def env_script(env: DevEnvironment) -> str:
    """The text of ``env.sh``."""
    exports = {
        "AWS_ENDPOINT_URL": env.daemon_url,
        "UPSTREAM_URL": env.upstream_url,
        "AWS_ACCESS_KEY_ID": env.access_key,
        "AWS_SECRET_ACCESS_KEY": env.secret_key,
        "AWS_DEFAULT_REGION": REGION,
        "S3BATCHD_CONFIG": str(env.config.absolute()),
    }
    lines = [
        "# Written by `s3batchd dev` at every start; source it in another shell",
        "# (after `make run`: source .local/env.sh).",
        "# AWS_ENDPOINT_URL is the daemon (aws-cli and boto3 use it without --endpoint-url),",
        "# UPSTREAM_URL the embedded SeaweedFS where the batches land; both accept these",
        "# credentials. S3BATCHD_CONFIG gives s3batchd get/ls/extract/reindex/status the",
        "# daemon's catalog and upstream.",
        *(f"export {name}={shlex.quote(value)}" for name, value in exports.items()),
        f'export PATH={shlex.quote(str(env.bin_dir.absolute()))}:"$PATH"',
    ]
    return "\n".join(lines) + "\n"


def write_env(data_dir: Path, env: DevEnvironment) -> Path:
    """Write ``<data_dir>/env.sh``."""
    path = data_dir / ENV_NAME
    path.write_text(env_script(env), encoding="utf-8")
    return path
