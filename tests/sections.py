"""The settings every test daemon starts from (in a thread or as a process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from s3batchd.cli.seaweed import LocalS3, free_ports


def daemon_sections(
    directory: Path, s3_server: LocalS3, *, drain_timeout_s: float, **sections: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Settings sections for a daemon spooling in ``directory`` and uploading to
    ``s3_server``, on free ports, with quick retries; ``sections`` override key by key."""
    base: dict[str, dict[str, Any]] = {
        "server": dict(zip(("port", "admin_port"), free_ports(2), strict=True)),
        "spool": {"dir": str(directory / "spool")},
        "batch": {"linger_ms": 300},
        "upstream": {"endpoint_url": s3_server.endpoint_url},
        "upload": {
            "retry_base_ms": 50,
            "retry_max_ms": 500,
            "parked_retry_base_s": 0.5,
            "parked_retry_max_s": 2,
        },
        "shutdown": {"drain_timeout_s": drain_timeout_s},
    }
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    return base
