"""Settings: a TOML file plus ``S3BATCHD_<SECTION>__<KEY>`` environment overrides.

This is the only module that reads the environment or configuration files. Every key, its
default, unit and cost is documented in ``config.example.toml`` and ``docs/configuration.md``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from s3batchd.constants import GB, MAX_PART_BYTES, MB, MIN_PART_BYTES
from s3batchd.errors import ConfigError

Durability = Literal["none", "fsync", "upload"]
#: Durability levels from weakest to strongest.
DURABILITY_ORDER: tuple[Durability, ...] = ("none", "fsync", "upload")


class Section(BaseModel):
    """Base of every settings section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(Section):
    """The HTTP front."""

    host: str = "127.0.0.1"
    """Address to listen on. Loopback by default: the daemon is a sidecar."""
    port: int = Field(default=9000, ge=0, le=65535)
    """TCP port; 0 picks a free one (printed at start)."""
    virtual_host_domains: tuple[str, ...] = ("localhost",)
    """Host names under which ``<bucket>.<domain>`` selects a bucket (virtual-hosted style)."""
    keep_alive_s: int = Field(default=5, gt=0)
    """Seconds an idle keep-alive connection stays open."""
    admin_host: str = "127.0.0.1"
    """Address of the admin listener (/healthz, /readyz, /metrics). It serves no data, so it
    may listen on the pod IP (``0.0.0.0``) for kubelet probes while the S3 port stays local."""
    admin_port: int = Field(default=9100, ge=0, le=65535)
    """Port of the admin listener; 0 turns it off."""
    """Idle time before a keep-alive connection is closed."""

    @field_validator("virtual_host_domains")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(domain.lower().strip(".") for domain in value)


class SpoolConfig(Section):
    """The local tar spool."""

    dir: Path = Path("./spool")
    """Directory holding one sub-directory of tar batches per target bucket."""
    durability: Durability = "fsync"
    """``fsync``: a PUT is answered after fdatasync (group commit). ``none``: page cache only.
    ``upload``: answered once the object's batch and index are in the bucket."""
    max_bytes: int = Field(default=4 * GB, ge=1 * MB)
    """Quota of the spool (open and sealed batches); above it PUTs get 503 SlowDown."""


class BatchConfig(Section):
    """When an open batch is sealed and uploaded (whichever comes first)."""

    linger_ms: int = Field(default=2_000, gt=0)
    """Time since the batch's first record."""
    max_records: int = Field(default=10_000, gt=0)
    """Objects per batch."""
    max_bytes: int = Field(default=64 * MB, ge=4096)
    """Size of the tar (headers, data and padding included)."""


class UpstreamConfig(Section):
    """The real S3 service the batches go to. Credentials come from the AWS default chain."""

    endpoint_url: str = ""
    """Empty means the AWS default endpoint for the region."""
    region: str = "us-east-1"
    prefix: str = "s3batchd/"
    """Key prefix of batches inside the target bucket."""
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)
    probe_interval_s: float = Field(default=15.0, ge=0)
    """How often /readyz's upstream check runs (a GET of a missing key in each bucket the
    daemon writes to, plus probe_buckets); 0 turns it off. One GET-class request per bucket."""
    probe_buckets: tuple[str, ...] = ()
    """Buckets to check before the daemon has written to any (and by ``check-config``)."""

    @field_validator("prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if value.startswith("/"):
            raise ValueError("must not start with '/'")
        if value and not value.endswith("/"):
            value += "/"
        return value


class UploadConfig(Section):
    """How sealed batches are uploaded."""

    concurrency: int = Field(default=2, gt=0)
    """Batches uploaded at once."""
    multipart_threshold_bytes: int = Field(default=16 * MB, ge=MIN_PART_BYTES)
    """Batches at least this large use multipart upload."""
    part_size_bytes: int = Field(default=8 * MB, ge=MIN_PART_BYTES, le=MAX_PART_BYTES)
    """Multipart part size (raised automatically to stay within 10,000 parts)."""
    part_concurrency: int = Field(default=4, gt=0)
    """Parts of one batch uploaded at once; memory is part_size_bytes x part_concurrency."""
    retry_base_ms: int = Field(default=200, gt=0)
    retry_max_ms: int = Field(default=30_000, gt=0)
    """Cap of the exponential backoff (full jitter) between attempts; retries never give up."""


class LimitsConfig(Section):
    """Request limits."""

    max_object_bytes: int = Field(default=16 * MB, gt=0, le=5 * GB)
    """Largest object accepted; larger PUTs get EntityTooLarge."""
    memory_buffer_bytes: int = Field(default=1 * MB, ge=0)
    """Bodies up to this size are buffered in memory, larger ones in a temporary file."""


class ShutdownConfig(Section):
    """SIGTERM / SIGINT handling."""

    drain_timeout_s: float = Field(default=30.0, ge=0)
    """Time to upload the sealed batches before exit; what is left stays in the spool."""


class MetricsConfig(Section):
    """Prometheus metrics on the admin listener."""

    put_price_per_1000_usd: float = Field(default=0.005, ge=0)
    """Price of 1,000 PUT-class requests (AWS S3 Standard), for the estimated savings."""


class LogConfig(Section):
    """Logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Settings(BaseSettings):
    """All of s3batchd's settings."""

    model_config = SettingsConfigDict(
        env_prefix="S3BATCHD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    server: ServerConfig = ServerConfig()
    spool: SpoolConfig = SpoolConfig()
    batch: BatchConfig = BatchConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    upload: UploadConfig = UploadConfig()
    limits: LimitsConfig = LimitsConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier wins: constructor arguments, then the environment, then the TOML file.
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts local connections."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(path: Path | None = None) -> Settings:
    """Load settings from ``path`` (if given) and the environment.

    Raises:
        ConfigError: the file is missing or unreadable, or a value is invalid.
    """
    if path is None:
        try:
            return Settings()
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from exc
    if not path.is_file():  # the TOML source would silently skip a missing file
        raise ConfigError(f"config file not found: {path}")

    class FromFile(Settings):  # pydantic-settings#259: no per-call toml_file
        model_config = SettingsConfigDict(toml_file=path)

    try:
        return FromFile()
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"{path}: {exc}") from exc
    except OSError as exc:  # e.g. a root-owned 0600 file and an unprivileged daemon
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        lines.append(f"{field}: {error['msg']}")
    return "invalid settings: " + "; ".join(lines)
