"""The settings an upload needs, as plain frozen dataclasses.

The upload process (``s3batchd.upload.proc``) gets its settings as these instead of the
pydantic models of ``s3batchd.config``: the process then never imports pydantic, whose models
and core take about 12 MiB of its memory beside boto3 (bench/README.md). The functions both
processes share (``upstream.make_client``, ``uploader.run_attempt``, ``logs.setup_logging``)
accept either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from s3batchd.config import LogConfig, UploadConfig, UpstreamConfig


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """``[upstream]`` as the upload client needs it."""

    endpoint_url: str
    region: str
    addressing_style: Literal["auto", "path", "virtual"]
    connect_timeout_s: float
    read_timeout_s: float

    @classmethod
    def of(cls, config: UpstreamConfig) -> UpstreamSettings:
        """These fields of ``config``."""
        return cls(
            endpoint_url=config.endpoint_url,
            region=config.region,
            addressing_style=config.addressing_style,
            connect_timeout_s=config.connect_timeout_s,
            read_timeout_s=config.read_timeout_s,
        )


@dataclass(frozen=True, slots=True)
class UploadSettings:
    """``[upload]`` as the upload process needs it."""

    concurrency: int
    part_concurrency: int
    multipart_threshold_bytes: int
    part_size_bytes: int
    child_nice: int

    @classmethod
    def of(cls, config: UploadConfig) -> UploadSettings:
        """These fields of ``config``."""
        return cls(
            concurrency=config.concurrency,
            part_concurrency=config.part_concurrency,
            multipart_threshold_bytes=config.multipart_threshold_bytes,
            part_size_bytes=config.part_size_bytes,
            child_nice=config.child_nice,
        )


@dataclass(frozen=True, slots=True)
class LogSettings:
    """``[log]``."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    format: Literal["text", "json"]

    @classmethod
    def of(cls, config: LogConfig) -> LogSettings:
        """These fields of ``config``."""
        return cls(level=config.level, format=config.format)
