"""Settings: a TOML file plus ``S3BATCHD_<SECTION>__<KEY>`` environment overrides.

This is the only module that reads the environment or configuration files. Every key, its
default, unit and cost is documented in ``config.example.toml`` and ``docs/configuration.md``.

Longer than the other modules on purpose: it is the schema, one section class per TOML table,
and every field carries the docstring ``docs/configuration.md`` is generated from
(``use_attribute_docstrings``, ``s3batchd.cli.configref``), so about half of its lines are those
docstrings; the loading code is the last hundred lines. One module keeps every key of the file
in one place to read and to add to.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from s3batchd.constants import GB, MAX_PART_BYTES, MAX_SINGLE_PUT_BYTES, MB, MIN_PART_BYTES
from s3batchd.errors import ConfigError

Durability = Literal["none", "fsync", "upload"]
#: Durability levels from weakest to strongest.
DURABILITY_ORDER: tuple[Durability, ...] = ("none", "fsync", "upload")


class Section(BaseModel):
    """Base of every settings section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ServerConfig(Section):
    """The HTTP front."""

    host: str = "127.0.0.1"
    """Address of the S3 listener. With ``auth.mode = "none"``, ``serve`` and ``dev`` refuse
    anything but loopback (``127.0.0.1`` or another ``127.x`` address, ``::1``, ``localhost``):
    whoever reaches an unauthenticated port writes to the buckets with the daemon's
    credentials. With ``auth.mode = "sigv4"`` any address is allowed."""
    port: int = Field(default=9000, ge=0, le=65535)
    """TCP port of the S3 listener; ``0`` picks a free port (uvicorn logs the one it got)."""
    virtual_host_domains: tuple[str, ...] = ("localhost",)
    """A ``Host`` of ``<bucket>.<domain>`` for one of these domains selects the bucket
    (virtual-hosted style, e.g. ``Host: demo.localhost:9000``); any other ``Host`` means path
    style, ``/<bucket>/<key>``. Lower-cased, surrounding dots removed. In the environment: a
    JSON list."""
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
    """Host header names (without the port) the S3 listener answers; ``<bucket>.<domain>`` of
    ``virtual_host_domains`` is allowed too. Anything else gets 400 InvalidRequest, so a web
    page whose DNS name rebinds to 127.0.0.1 cannot write through the daemon. ``["*"]``
    allows any Host. The host an absolute-form target names (``PUT http://host/bucket/key``)
    must be allowed too, and a request without a Host, with an empty one or with a malformed
    one (``[::1]evil.com``) gets the same 400 whatever this says. In the environment: a JSON
    list."""
    max_concurrent_requests: int = Field(default=256, gt=0)
    """S3 requests served at once; more get 503 SlowDown with Retry-After (every client
    retries). Memory: up to limits.memory_buffer_bytes per request in flight."""
    max_connections: int = Field(default=1024, gt=0)
    """Open connections (S3 and admin listeners together) beyond which uvicorn answers a
    plain 503 and closes (the admin listener's probes included, so keep it well above the
    expected clients). Each idle connection costs a few KiB. A new connection that reaches
    the limit first closes the longest-idle connections (no request in flight; clients open
    a new one), so idle keep-alive connections never lock others out: the 503 comes only
    when every connection is busy."""
    header_timeout_s: float = Field(default=10.0, gt=0)
    """Longest time for a request's headers to arrive (from the connection opening or the
    previous response); a slower client is disconnected, so trickled headers cannot hold a
    connection (slowloris). Checked a few times per timeout, so the disconnect comes at most a
    quarter of it (or 1 s) late."""
    body_timeout_s: float = Field(default=30.0, gt=0)
    """Longest wait for the next piece of a request body; a client that stalls longer gets
    400 RequestTimeout (botocore retries it) and its slot is freed for others. Checked a few
    times per timeout, so the answer comes at most a quarter of it (or 1 s) late."""
    body_min_rate_bytes_s: int = Field(default=1024, gt=0)
    """Slowest average rate (bytes per second of waiting for it) a request body may keep
    after ``body_deadline_grace_s``: a body of declared length L (``Content-Length``, or
    ``x-amz-decoded-content-length`` for aws-chunked) must be complete within
    ``body_deadline_grace_s + L / body_min_rate_bytes_s`` seconds of waiting, one of unknown
    length (``Transfer-Encoding: chunked``) must never fall behind the rate; otherwise 400
    RequestTimeout and the connection is closed. So a client trickling a body (each piece
    within ``body_timeout_s``) cannot hold a request slot for long. Time the daemon spends
    passing pieces on (to the bucket) does not count. Checked with ``body_timeout_s``."""
    body_deadline_grace_s: float = Field(default=10.0, gt=0)
    """Seconds of waiting for a body before ``body_min_rate_bytes_s`` applies (a slow start,
    ``Expect: 100-continue``)."""
    progressing_reserve: float = Field(default=0.25, ge=0, le=1)
    """Share of ``max_concurrent_requests`` kept for requests whose bodies keep
    ``body_min_rate_bytes_s``: a body that falls behind the rate (after the grace) holds one
    of at most ``(1 - progressing_reserve) * max_concurrent_requests`` slow slots until its
    deadline or until it catches up; one that falls behind while they are all taken gets
    400 RequestTimeout at once. ``0``: slow bodies may hold every slot (only their deadlines
    end them)."""
    keep_alive_s: int = Field(default=5, gt=0)
    """Seconds (whole) an idle keep-alive connection stays open. Longer: fewer TCP handshakes
    for clients, more idle sockets held open."""
    workers: int = Field(default=1, ge=1, le=64)
    """Daemon processes serving the port, each with its own spool (worker 0: ``spool.dir``,
    worker i: ``<spool.dir>/_workers/<i>``), writer id and share ``spool.max_bytes / workers``
    of the quota; they share the catalog, the held multipart uploads and the admin port
    (``/metrics`` gives every worker's samples, labelled ``worker``; ``/readyz`` is ready when
    every worker is). Python runs one request at a time
    per process: more workers use more cores (2 workers on 2 cores: 1.32x the PUT/s of one in
    the full benchmark, 1.63x in bench/workers.py; bench/README.md). Each worker has its own
    socket on the port (SO_REUSEPORT), and one that dies is started again. Lowering it moves
    the batches of the spools no longer used into worker 0's at the next start."""
    admin_host: str = "127.0.0.1"
    """Address of the admin listener (``/healthz``, ``/readyz``, ``/metrics``). It serves no
    data, so it may listen on the pod IP (``0.0.0.0``) for kubelet probes and Prometheus while
    ``host`` stays on loopback."""
    admin_port: int = Field(default=9002, ge=0, le=65535)
    """Port of the admin listener; ``0`` turns it off (and with it probes and metrics). A
    separate port, so the health paths never collide with a bucket named ``healthz``. 9002 is
    outside the ports of Prometheus's "Default port allocations" list (9090-9094 for its own
    components, 9100 and up for exporters: 9100 is node_exporter's, which runs on most hosts
    and host-network pods)."""

    @field_validator("virtual_host_domains")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(domain.lower().strip(".") for domain in value)


class SpoolConfig(Section):
    """The local tar spool."""

    dir: Path = Path("./spool")
    """Directory of the local tar spool: one sub-directory of batch files per target bucket,
    plus ``_tmp/`` (large request bodies being received, a compaction pass's new tar while it is
    built), ``_quarantine/`` (files recovery
    could not read) and ``_catalog/`` (unless ``catalog.path`` is set); no bucket name starts
    with ``_`` (docs/architecture.md#spool-directory-layout). A relative path is relative to the
    daemon's working directory. Disk: up to ``max_bytes`` plus one batch, the large request
    bodies in flight and the catalog."""
    durability: Durability = "fsync"
    """When a PUT is answered. ``fsync``: after ``fdatasync`` of its bytes; concurrent PUTs
    share one sync (group commit), so each PUT's latency includes one disk flush, nothing in
    money. ``none``: after the write to the page cache; survives a daemon crash, but a power
    loss or kernel crash can lose acknowledged objects of open batches. ``upload``: once the
    object's batch and its index are in the bucket, i.e. a latency of ``batch.linger_ms`` plus
    the upload, in exchange for nothing depending on this machine's disk. Sealed batches are
    synced in every mode. A client may ask for a stronger level for one object with the request
    header ``x-s3batchd-durability`` (a weaker one is ignored). See docs/durability.md."""
    max_bytes: int = Field(default=4 * GB, ge=1 * MB)
    """Quota of the spool in bytes: open batches plus sealed batches waiting for upload. Above
    it a PUT gets ``503 SlowDown`` with ``Retry-After: 1`` before its body is read (every S3
    client retries that); ``/readyz`` fails from 90 % of it. Size it for the backlog of the
    upstream outage you want to ride out, ingest rate x outage duration; the disk needs one
    batch and the large request bodies in flight on top (docs/operations.md#sizing-the-spool)."""


class BatchConfig(Section):
    """When an open batch is sealed and uploaded (whichever comes first)."""

    linger_ms: int = Field(default=2_000, gt=0)
    """Milliseconds after the batch's first object until it is sealed. The main cost knob: a
    busy bucket costs about 2 PUTs per linger (docs/operations.md#choosing-the-triggers).
    Longer: fewer requests, but objects reach S3 (and become readable there) later and more
    data waits on local disk. PUT answers only wait for it with ``spool.durability = "upload"``."""
    max_records: int = Field(default=10_000, gt=0)
    """Objects per batch. 10,000 keeps a batch's index to a few MB of JSON for typical keys
    (rendered in memory at upload) while costing only 2 PUTs per 10,000 objects at high
    rates."""
    max_bytes: int = Field(default=64 * MB, ge=4096)
    """Size of the tar in bytes (tar headers, data, padding and end marker included). Bounds
    the local disk per batch and the size of each upload; tars of
    ``upload.multipart_threshold_bytes`` or more are uploaded in parts. An object that would
    not fit seals the batch and starts the next one; objects are never split, so a larger
    object gets a batch of its own. Only an object larger than this makes a larger tar (alone)."""
    passthrough_bytes: int = Field(default=8 * MB, gt=0, le=MAX_SINGLE_PUT_BYTES)
    """Objects of this many bytes or more are not batched: they are streamed to the bucket as
    ordinary objects (one PutObject each, answered with the bucket's own response). A PUT of
    unknown size is received to ``<spool.dir>/_tmp/`` and forwarded when it grows past this.
    A client multipart upload is assembled in the spool and batched while its parts stay below
    this in total, and becomes a real multipart upload in the bucket once they pass it.
    Objects above ``limits.max_object_bytes`` are forwarded too, whatever this says.
    Forwarding needs ``PutObject`` (and the multipart operations) in ``passthrough``; without
    it, larger objects are batched up to ``limits.max_object_bytes``."""
    versioned_buckets: Literal["forward", "batch"] = "forward"
    """PutObject into a bucket with versioning Enabled or Suspended: ``forward`` sends each one
    to the bucket (it gets its version id, ListObjectVersions and versioned deletes see it);
    ``batch`` batches it anyway, and the object then has no version of its own: only its tar
    is versioned (docs/passthrough.md#per-bucket-decisions). Object Lock buckets are never
    batched, whatever this says."""
    bucket_modes_refresh_s: float = Field(default=300.0, gt=0)
    """Seconds a bucket's versioning, object lock and default encryption (read with
    GetBucketVersioning, GetObjectLockConfiguration and GetBucketEncryption when the daemon
    first writes to it) are trusted before they are read again in the background. A change
    made through the daemon is noticed at once; one made elsewhere within this time. Costs 3
    GET-class requests per bucket per interval while the bucket is written to."""


class UpstreamConfig(Section):
    """The real S3 service the batches go to. Credentials come from the AWS default chain."""

    endpoint_url: str = ""
    """Endpoint URL of the S3 service (AWS or any S3-compatible store); empty means AWS's own
    endpoint for ``region`` (``AWS_ENDPOINT_URL`` and an AWS config file's ``endpoint_url`` are
    ignored: ``make run``'s env.sh points them at the daemon)."""
    region: str = "us-east-1"
    """Region used for request signing and for the default endpoint."""
    prefix: str = "s3batchd/"
    """Key prefix of batches inside the target bucket: ``<prefix>YYYY/MM/DD/<batch id>.tar``
    and ``.index.json``. Must not start with ``/``; a missing trailing ``/`` is added; ``""``
    puts the date directories at the top of the bucket. Also the scope of the IAM policy and
    of the lifecycle rule (docs/operations.md)."""
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    """How the bucket goes into upstream URLs (botocore's ``addressing_style``): ``path``
    (``https://endpoint/bucket/key``), ``virtual`` (``https://bucket.endpoint/key``) or
    ``auto`` (botocore chooses)."""
    list_batch_objects: bool = False
    """Whether listings through the daemon (ListObjects, ListObjectsV2) show the batch objects
    (the tars and indexes under ``prefix``) when they do not ask for ``prefix``. ``false``:
    ``aws s3 sync s3://bucket/ dir`` or ``aws s3 ls --recursive`` through the daemon see the
    application's objects only, not every batch; a listing whose prefix starts with
    ``prefix`` shows them, and GET of a batch by its key works either way. An empty ``prefix``
    hides nothing. ``true``: every listing shows them, as the bucket's own does."""
    connect_timeout_s: float = Field(default=5.0, gt=0)
    """Seconds to open a connection to S3. Shorter: an unreachable endpoint is noticed, and
    the attempt retried, sooner."""
    read_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds to wait for a response or more data on an open S3 connection; a stalled call
    fails after it and is retried (another billed request)."""
    bucket_check_ttl_s: float = Field(default=3600.0, gt=0)
    """Seconds a bucket's HeadBucket answer is trusted once it said the bucket exists (or
    ``403 AccessDenied``, when the credentials lack ``s3:ListBucket``). Before the first
    batched write to a bucket (PutObject, a held CreateMultipartUpload, a CopyObject of a
    batched object) the daemon asks the upstream whether it exists, so a 200 is never given
    for a bucket the upstream says does not exist; an expired answer is refreshed in the
    background, without holding up writes. Costs one HEAD (a GET-class request) per bucket
    per this many seconds; the cache keeps 4,096 buckets per worker process
    (docs/operations.md#missing-buckets)."""
    bucket_missing_ttl_s: float = Field(default=5.0, gt=0)
    """Seconds a ``404`` answer (writes get ``404 NoSuchBucket``, nothing is spooled) or no
    answer at all (upstream unreachable or failing: writes are accepted) is kept before the
    bucket is asked again. Shorter: a bucket created outside the daemon takes writes sooner,
    for a HEAD per bucket this often while it is missing. CreateBucket through the daemon
    drops the answer at once."""
    bucket_check_timeout_s: float = Field(default=2.0, gt=0)
    """Seconds for the whole HeadBucket (connect, send, answer: one deadline); without an
    answer in time the write is accepted (buffering through an outage is the point). The
    first write to a bucket waits at most this long while the upstream does not answer."""
    probe_interval_s: float = Field(default=15.0, ge=0)
    """Seconds between the upstream checks behind ``/readyz``'s warnings and the
    ``s3batchd_upstream_up`` gauge: a GET of a missing key under ``prefix`` in the buckets the
    daemon recently wrote to (``probe_max_buckets``, ``probe_forget_s``) plus
    ``probe_buckets``, one after the other (a check never overlaps the one before).
    ``NoSuchKey`` or ``AccessDenied`` mean the endpoint, bucket and credentials work; anything
    else is a warning in ``/readyz`` (it stays ready: the spool absorbs an outage). Costs one
    GET-class request (S3 Standard: $0.0004 per 1,000) per probed bucket per interval; ``0``
    turns the checks off."""
    probe_buckets: tuple[str, ...] = ()
    """Buckets to check before the daemon has written to any; ``s3batchd check-config`` tests
    them too (or the ones given with ``--bucket``). In the environment: a JSON list."""
    probe_max_buckets: int = Field(default=10, gt=0)
    """The probe checks at most this many of the buckets the daemon writes to: the most
    recently written ones (plus every one of ``probe_buckets``). Bounds its cost whatever the
    number of buckets: with the defaults, at most 40 GETs a minute."""
    probe_forget_s: float = Field(default=900.0, gt=0)
    """Seconds after its last batch was written that a bucket is no longer probed (a
    restarted daemon knows only the buckets of the batches it recovered)."""
    probe_timeout_s: float = Field(default=3.0, gt=0)
    """Seconds a probe request may take (connect and answer, one attempt, no retries) before
    it counts as a failure: an upstream that accepts connections and never answers is noticed
    within it, not after the uploads' ``read_timeout_s``."""

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
    """Batches uploaded at once (threads, in the daemon's process or in the upload process of
    ``child_processes``). More: catches up faster after a backlog, at the cost of more
    connections. The boto3 client keeps up to ``concurrency`` x ``part_concurrency`` + 4
    connections."""
    child_processes: bool = False
    """Upload from a child process (``python -m s3batchd.upload.proc``, started at the first
    upload, with its own boto3 client from these settings and the daemon's environment)
    instead of threads of the daemon's process. In the daemon's process an upload's Python
    work shares the requests' interpreter: at half of peak load on two cores, with durability
    ``none``, p99 of PUTs was 16-18 ms with uploads on threads sending 8 parts at once and 6-8
    ms from the child; with ``busy_part_concurrency`` 1 (the default: one part at a time while
    PUTs arrive) 5.1-7.7 ms on threads, which leaves the child little to gain (bench/README.md;
    with ``fsync`` it varies from run to run either way, 13-39 ms). The cost is memory: the
    child takes about 75 MiB RSS (boto3 and its client, upload buffers), about 45 MiB more than
    the daemon alone counted once (PSS): 130-163 MiB for both in the benchmark against 85-110
    MiB without it."""
    child_nice: int = Field(default=10, ge=0, le=19)
    """How much lower the upload process's CPU priority is than the daemon's (the increment
    it passes to ``nice(2)`` when it starts; 0-19, ``0``: the same priority). With
    ``child_processes``, when the cores are busy the scheduler runs the daemon's request
    path first and the upload with what is left: at half of peak load on two cores
    (durability ``none``) p99 of PUTs was 6.1-8.6 ms with 10 against 8.2-14.6 ms with 0
    (bench/README.md). Uploads still get their share of an idle core; if they fall behind,
    the spool's quota slows PUTs down (``SlowDown``) rather than losing anything."""
    multipart_threshold_bytes: int = Field(default=16 * MB, ge=MIN_PART_BYTES)
    """Tars of at least this many bytes use multipart upload: CreateMultipartUpload, one
    UploadPart per part and CompleteMultipartUpload, i.e. parts + 3 PUT-class requests per
    batch with the index instead of 2, in exchange for parallel parts. Set it above the
    largest tar (``batch.max_bytes`` plus a few KiB, or ``limits.max_object_bytes`` if larger)
    to make every batch exactly 2 PUTs."""
    part_size_bytes: int = Field(default=8 * MB, ge=MIN_PART_BYTES, le=MAX_PART_BYTES)
    """Multipart part size in bytes; doubled automatically while a tar would need more than
    10,000 parts. Larger parts: fewer PUT-class requests per batch. Parts are streamed from
    the spool file (read twice: checksum, then the request), never held in memory whole."""
    part_concurrency: int = Field(default=8, gt=0)
    """Parts of one batch uploaded at once (threads and connections; memory stays a few read
    buffers per part) when no PUT is arriving, or when uploads fall behind (a sealed batch
    waits for an upload worker); ``busy_part_concurrency`` otherwise. Parallel parts upload a
    batch faster where the bucket takes parallel connections well: a 64 MiB batch took 0.4-1.3
    s with 8 against 0.8-1.2 s with 1 (bench/README.md)."""
    busy_part_concurrency: int = Field(default=1, gt=0)
    """Parts of one batch uploaded at once while PUTs are arriving (a batch is open) and the
    uploads keep up; at most ``part_concurrency``. On the daemon's threads (without
    ``child_processes``) an upload's Python work shares the interpreter and the cores with
    the requests', and parts sent side by side lengthen the tail of PUT latency: at half of
    peak load on two cores (durability ``none``, batches of about 20 MiB, alternating runs)
    p99 of PUTs was 5.1-7.5 ms with 1, 6.9-10.8 ms with 2 and 10.2-19.3 ms with 8
    (bench/README.md). One part at a time kept up there with a batch every few seconds
    (``concurrency`` batches still upload side by side). The upload process of
    ``child_processes`` always uses ``part_concurrency``. Set it to ``part_concurrency`` to
    upload as wide under load as when idle."""
    retry_base_ms: int = Field(default=200, gt=0)
    """Milliseconds: base of the exponential backoff between attempts to upload a batch. After
    failed attempt n (counting from 0) the wait is uniform in [0, min(``retry_max_ms``,
    ``retry_base_ms`` x 2^n)] ms (full jitter). Every attempt pays again for the requests it
    sends."""
    retry_max_ms: int = Field(default=30_000, gt=0)
    """Milliseconds: cap of that backoff. Uploads are retried without a limit; nothing sealed
    is dropped. Each S3 call is also retried by boto3 itself (standard mode, up to 3 attempts),
    and every attempt is a billed request."""
    parked_retry_base_s: float = Field(default=60.0, gt=0)
    """Seconds: first wait before a parked batch is tried again. A batch whose upload fails in
    a way a retry cannot fix by itself (NoSuchBucket, AccessDenied, InvalidBucketName, a KMS
    refusal, another object under its key) is parked: kept in the spool with a
    ``<batch id>.parked`` file beside it and tried once more after a wait, not by an upload
    worker, so other buckets' batches keep flowing. After the n-th failed attempt (from 1)
    the wait is uniform in [w/2, w] with w = min(``parked_retry_max_s``,
    ``parked_retry_base_s`` x 2^(n-1)). ``s3batchd parked retry`` tries at once
    (docs/operations.md, "Parked batches")."""
    parked_retry_max_s: float = Field(default=1800.0, gt=0)
    """Seconds: cap of the wait between attempts at a parked batch. Each attempt costs one or
    two requests; a parked batch is never dropped but by ``s3batchd parked discard``."""
    parked_max_bucket_fraction: float = Field(default=0.25, gt=0, le=1)
    """Share of ``spool.max_bytes`` (with ``server.workers`` > 1: of each worker's share) that
    one bucket's parked batches may take. Past it, new batched PUTs to that bucket get ``503
    SlowDown`` naming the refusal while the other buckets keep being served, so one bucket the
    daemon may not write cannot fill the spool (docs/operations.md, "Parked batches")."""


class LimitsConfig(Section):
    """Request limits."""

    max_object_bytes: int = Field(default=16 * MB, gt=0, le=MAX_SINGLE_PUT_BYTES)
    """Largest object batched, in bytes. Larger PUTs are forwarded to the bucket when
    ``passthrough`` allows ``PutObject`` (up to S3's 5 GiB), else they get
    ``400 EntityTooLarge`` (before the body is read when the size is declared). Objects larger
    than ``batch.max_bytes`` get a batch of their own. Disk: a body above
    ``memory_buffer_bytes`` occupies up to this much in ``<spool.dir>/_tmp/`` while it is
    received (and a forwarded body of unknown length up to its size)."""
    memory_buffer_bytes: int = Field(default=1 * MB, ge=0)
    """Request bodies up to this many bytes are held in memory while they are received; larger
    ones go to a temporary file in ``<spool.dir>/_tmp/`` (one more disk copy). Memory: up to
    this much per request in flight."""


#: Every operation name ``passthrough.operations`` accepts besides ``"*"``.
FORWARDABLE_OPERATIONS = frozenset(
    {
        "AbortMultipartUpload",
        "CompleteMultipartUpload",
        "CopyObject",
        "CreateBucket",
        "CreateMultipartUpload",
        "DeleteBucket",
        "DeleteBucketSubresource",
        "DeleteObject",
        "DeleteObjectTagging",
        "DeleteObjects",
        "GetBucketLocation",
        "GetBucketSubresource",
        "GetObject",
        "GetObjectAcl",
        "GetObjectAttributes",
        "GetObjectTagging",
        "HeadBucket",
        "HeadObject",
        "ListBuckets",
        "ListMultipartUploads",
        "ListObjectVersions",
        "ListObjects",
        "ListObjectsV2",
        "ListParts",
        "PostBucketSubresource",
        "PostObjectSubresource",
        "DeleteObjectSubresource",
        "PutBucketSubresource",
        "PutObject",
        "PutObjectAcl",
        "PutObjectTagging",
        "PutObjectSubresource",
        "UploadPart",
        "UploadPartCopy",
    }
)


class PassthroughConfig(Section):
    """Which S3 operations are forwarded to the bucket (everything the daemon does not batch).

    Also settable as a plain list: ``passthrough = ["PutObject"]`` at the top of the file, or
    ``S3BATCHD_PASSTHROUGH='["PutObject"]'``."""

    operations: tuple[str, ...] = ("*",)
    """S3 operation names that may be forwarded, or ``"*"`` for all. A forwarded request is
    verified as a PUT is, re-signed with the daemon's own credentials and streamed to
    ``upstream.endpoint_url``; operations not listed get ``403 AccessDenied``. ``["PutObject"]``
    forwards only large PUTs; ``[]`` forwards nothing (the daemon only batches and reads back
    what it batched). Names: docs/passthrough.md#operations."""

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: object) -> object:
        if isinstance(value, list | tuple | str):
            return {"operations": [value] if isinstance(value, str) else list(value)}
        return value

    @field_validator("operations")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - FORWARDABLE_OPERATIONS - {"*"})
        if unknown:
            raise ValueError(f"unknown S3 operation {unknown[0]!r}")
        return value

    def allows(self, operation: str) -> bool:
        """Whether ``operation`` may be forwarded."""
        return "*" in self.operations or operation in self.operations


class ShutdownConfig(Section):
    """SIGTERM / SIGINT handling."""

    drain_timeout_s: float = Field(default=30.0, ge=0)
    """Seconds to seal and upload the open and sealed batches after SIGTERM/SIGINT; what is
    left stays in the spool (exit status 3) and is uploaded at the next start. Requests in
    progress then get ``max(1, drain_timeout_s)`` whole seconds to finish, so a stop can take
    about twice this long: give the supervisor more than that before it sends SIGKILL."""


class AccessKey(Section):
    """One client credential the daemon accepts (``auth.mode = "sigv4"``)."""

    access_key_id: str = Field(min_length=1)
    """The access key id clients sign with."""
    secret_access_key: SecretStr
    """Its secret; never logged or printed."""
    buckets: tuple[str, ...] = ()
    """Allowlist of ``bucket`` or ``bucket/prefix`` entries this key may use; empty = any."""


class AuthConfig(Section):
    """Who may use the daemon."""

    mode: Literal["none", "sigv4"] = "none"
    """``none``: every request is accepted (only allowed while the S3 listener is on
    loopback). ``sigv4``: every request must be signed (SigV4 header, presigned or streaming
    chunk signatures, or SigV2) with one of ``access_keys``; clock skew over 15 minutes is
    refused. Verification costs two HMAC chains per request (microseconds)."""
    access_keys: tuple[AccessKey, ...] = ()
    """Accepted credentials. In the environment: a JSON list, e.g.
    ``S3BATCHD_AUTH__ACCESS_KEYS='[{"access_key_id": "app", "secret_access_key": "..."}]'``."""

    @model_validator(mode="after")
    def _keys_for_sigv4(self) -> AuthConfig:
        if self.mode == "sigv4" and not self.access_keys:
            raise ValueError("auth.mode = 'sigv4' needs at least one entry in auth.access_keys")
        return self


class CatalogConfig(Section):
    """The local catalog of objects this daemon wrote (GET, HEAD and List through it)."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    """Where the catalog shared by the daemons in front of a bucket lives. ``sqlite``: the
    embedded catalog of this daemon (``path``). ``postgres``: one catalog for the fleet in
    PostgreSQL 14 or newer (``dsn``): every daemon writes a batch's rows there in one
    statement once its index is uploaded and reads every key written through any daemon;
    the SQLite catalog stays this daemon's cache of its own writes (its batches not uploaded
    yet are read from its spool). When PostgreSQL fails, PUTs are still taken, this daemon's
    own keys stay readable, other reads answer ``503 SlowDown`` with ``Retry-After`` and
    readiness is not affected (docs/operations.md, "A fleet")."""
    dsn: SecretStr = SecretStr("")
    """libpq connection URI of the PostgreSQL catalog (``backend = "postgres"``), e.g.
    ``postgresql://s3batchd@db.internal:5432/s3batchd?sslmode=verify-full&sslrootcert=system``
    (``sslrootcert=system``: the system CAs; without it libpq wants
    ``~/.postgresql/root.crt``). Keep the
    password out of the file: libpq reads ``PGPASSWORD`` (or ``PGPASSFILE``) from the
    environment, or pass the whole URI as ``S3BATCHD_CATALOG__DSN`` (e.g. from a Kubernetes
    Secret). Never logged. The schema is created or migrated at start (``s3batchd catalog
    migrate`` does it ahead of a rollout)."""
    postgres_timeout_s: float = Field(default=2.0, gt=0, le=60)
    """Seconds a PostgreSQL catalog call may take (connecting included) before the read that
    needs it answers ``503 SlowDown``; a batch's write is retried in the background."""

    path: str = ""
    """SQLite file of the catalog (key -> batch, offset, attributes) behind GET, HEAD and
    ListObjects through the daemon; empty means ``<spool.dir>/_catalog/catalog.sqlite3``. It is
    rebuilt from the spool at start, so losing it only forgets keys of uploaded batches."""
    retention_s: float = Field(default=7 * 24 * 3600, gt=0)
    """Seconds an object stays readable by key through the daemon after it was written (7 days
    by default); afterwards GET and HEAD answer ``404 NoSuchKey``. Disk: one catalog row (about
    300 bytes plus its metadata) per object written in that time."""
    follow: bool = True
    """Follow the bucket: every ``follow_interval_s`` the daemon lists the index objects under
    ``upstream.prefix`` that are new (``start-after`` the key of a batch opened
    ``follow_lookback_s`` before the previous round) in each bucket it serves (written to, read
    through it, or listed in ``follow_buckets``), and learns every batch of every writer (objects,
    deletes and attribute updates) into its catalog: a key written through any daemon is readable
    through this one about one interval after its batch is uploaded, and a daemon started with an
    empty catalog (an ``emptyDir`` spool after a rollout) backfills the last ``retention_s`` in the
    background. While a bucket's backfill runs, or its last follow round failed, a read the catalog
    cannot answer (a key the bucket says is missing, a listing) gets ``503 SlowDown`` with
    Retry-After instead of an answer that could be wrong. Cost: one LIST (PUT-class) per page of
    1,000 keys per bucket per round, plus one GET per new index
    (docs/operations.md#following-the-bucket-sqlite). With ``backend = "postgres"`` there is
    nothing to follow (every daemon writes its batches into the shared catalog): ignored.
    Following or not, a read that finds the tar its catalog names deleted by compaction looks
    up the compacted batch that replaced it, once per such batch (docs/compaction.md)."""
    follow_interval_s: float = Field(default=30.0, gt=0)
    """Seconds between two follow rounds of a bucket in which batches arrive: a batch of
    another daemon is readable here about this long after its index is uploaded."""
    follow_idle_max_s: float = Field(default=300.0, gt=0)
    """An idle bucket (a round learned nothing new) is polled less often: the interval
    doubles after each idle round, up to this many seconds (at least ``follow_interval_s``),
    and goes back to ``follow_interval_s`` when a round learns a batch or this daemon
    writes to the bucket. So after a quiet spell the first new batch of another daemon may
    take up to this long to become readable here."""
    follow_lookback_s: float = Field(default=120.0, ge=0)
    """Each round lists the index keys of batches opened from this many seconds before the
    previous round started (index keys sort by the time their batch was opened, not by when
    it was uploaded; a writer's clock behind counts as well): a batch uploaded up to this
    long after it was opened (linger, upload time, retries) is still found. One
    uploaded later (after a long upstream outage) is learned at the next start with an empty
    catalog or by ``s3batchd reindex``. Longer: more keys listed per round. The search for the
    compacted batch of a batch a read found deleted lists from that batch's time less this."""
    follow_buckets: tuple[str, ...] = ()
    """Buckets followed from the start, besides those this daemon writes to or reads through
    (each of which is followed from its first request on). In the environment: a JSON list."""

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> CatalogConfig:
        if self.backend == "postgres" and not self.dsn.get_secret_value():
            raise ValueError("catalog.backend = 'postgres' needs catalog.dsn")
        return self


class MetricsConfig(Section):
    """Prometheus metrics on the admin listener."""

    put_price_per_1000_usd: float = Field(default=0.005, ge=0)
    """Price of 1,000 PUT-class requests in USD (AWS S3 Standard: 0.005). Only used for the
    ``s3batchd_estimated_savings_usd`` metric on the admin listener's ``/metrics``."""
    loop_lag_interval_s: float = Field(default=0.1, ge=0, le=60)
    """Seconds between two wake-ups of the event-loop lag monitor
    (``s3batchd_event_loop_lag_seconds``: how late each wake-up ran; while the loop is late,
    every request of the process waits). Each wake-up of an idle daemon costs some CPU: 0.1
    used about 0.2 % of a core on a test machine, 0.005 about 2 %. 0 turns the monitor off."""


class LogConfig(Section):
    """Logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Level of the root logger; logs go to stderr. boto3, botocore, urllib3 and s3transfer
    stay at WARNING (their request details may carry signatures)."""
    format: Literal["text", "json"] = "text"
    """``text``: one line per event, ``time level logger: message``; ``json``: one JSON object
    per line with ``time``, ``level``, ``logger``, ``message`` (and ``exception``)."""


class CompactionConfig(Section):
    """Compaction: batches whose objects were mostly deleted or overwritten are rewritten
    without the dead bytes (``s3batchd compact``; docs/compaction.md)."""

    enabled: bool = False
    """Run a compaction pass in the daemon every ``interval_s`` over each bucket its catalog
    knows (with ``server.workers`` > 1, in worker 0 only; the lease lets one compactor of the
    fleet in at a time).
    ``false``: run ``s3batchd compact`` on a schedule instead (docs/compaction.md)."""
    interval_s: float = Field(default=3600.0, gt=0)
    """Seconds between two compaction passes in the daemon (``enabled = true``)."""
    min_dead_ratio: float = Field(default=0.3, gt=0, le=1)
    """A batch is rewritten once this share of its object bytes is dead (deleted, or
    overwritten by a later write of the key), and the storage saved over ``payback_days``
    pays for the requests of the rewrite. SeaweedFS vacuums volumes at 0.3."""
    payback_days: float = Field(default=30.0, gt=0)
    """Days of saved storage that must pay for a rewrite's requests (the GETs of the live
    members, the PUTs of the new tar and index)."""
    erase_within_s: float = Field(default=86400.0, ge=0)
    """A batch holding bytes of an object deleted or overwritten longer ago than this is
    rewritten whatever its dead share: the bytes of a deleted object are gone from the bucket
    within ``erase_within_s + grace_s`` of the delete (plus the time between two passes).
    0 turns the deadline off."""
    grace_s: float = Field(default=3600.0, ge=0)
    """Seconds a replaced batch's tar and index stay after its compacted batch's index is
    written: readers holding an old range (a PUT response's headers, an old index, a daemon
    whose catalog has not moved the key yet) keep working until then. A later pass deletes
    them."""
    lease_s: float = Field(default=600.0, gt=0)
    """Seconds the compaction lease (an object under ``upstream.prefix`` written with
    conditional requests) is held without renewal before another compactor may take it.
    Unused with ``catalog.backend = "postgres"``: the lease is then a PostgreSQL advisory lock,
    which ends with its holder's session (docs/compaction.md)."""
    tombstone_horizon_s: float = Field(default=30 * 86400, ge=0)
    """Seconds after a delete its tombstone may be dropped by a pass, once no write of its key
    stamped before it is left in the bucket (docs/compaction.md, "Dropping tombstones"); the
    same for an attribute update whose object is gone. A write reaches the bucket when its
    batch is uploaded, which a down upstream or a parked batch can hold back: one held back
    longer than this whose objects were deleted meanwhile would make them readable again.
    Keep it above the longest time a batch may wait in a spool (30 days by default). 0: never
    drop one for that (only a later tombstone of its key carried into the same compacted batch
    replaces one), and no batch is deleted for having nothing left to carry."""
    storage_price_per_gb_month_usd: float = Field(default=0.023, ge=0)
    """Price of one GB stored for a month in USD (AWS S3 Standard: 0.023): the saving side of
    the ``payback_days`` rule. PUT prices: ``metrics.put_price_per_1000_usd``."""
    get_price_per_1000_usd: float = Field(default=0.0004, ge=0)
    """Price of 1,000 GET requests in USD (AWS S3 Standard: 0.0004): the ranged reads of
    the live members of a rewritten batch."""


class Settings(BaseSettings):
    """All of s3batchd's settings."""

    model_config = SettingsConfigDict(
        env_prefix="S3BATCHD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    server: ServerConfig = ServerConfig()
    spool: SpoolConfig = SpoolConfig()
    batch: BatchConfig = BatchConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    upload: UploadConfig = UploadConfig()
    limits: LimitsConfig = LimitsConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    auth: AuthConfig = AuthConfig()
    catalog: CatalogConfig = CatalogConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    passthrough: PassthroughConfig = PassthroughConfig()
    compaction: CompactionConfig = CompactionConfig()

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
        line = f"{field}: {error['msg']}"
        if error["type"] == "extra_forbidden":
            line += _suggestion(error["loc"])
        lines.append(line)
    return "invalid settings: " + "; ".join(lines)


def _suggestion(loc: tuple[int | str, ...]) -> str:
    """`` (did you mean <section>.<key>?)`` for an unknown key at ``loc``, or ``""``."""
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""  # inside a list (auth.access_keys) or an unknown section
        model = annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    if not close:
        return ""
    return f" (did you mean {'.'.join([*(str(part) for part in loc[:-1]), close[0]])}?)"


ENV_PREFIX = "S3BATCHD_"
#: Variables with the prefix that s3batchd reads but that are not settings.
OTHER_VARIABLES = ("S3BATCHD_CONFIG",)


def variable_names() -> list[str]:
    """Every environment variable name that sets something: ``S3BATCHD_<SECTION>`` (a
    section as JSON) and ``S3BATCHD_<SECTION>__<KEY>``, plus ``OTHER_VARIABLES``."""
    names = list(OTHER_VARIABLES)
    for section, field in Settings.model_fields.items():
        names.append(f"{ENV_PREFIX}{section.upper()}")
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += [f"{ENV_PREFIX}{section}__{key}".upper() for key in annotation.model_fields]
    return names


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One message per ``S3BATCHD_*`` variable of ``environ`` (default: the process's) that
    names no setting, e.g. ``S3BATCHD_SERVER_PORT`` with one underscore, which
    pydantic-settings would silently ignore; with the closest valid name, if any."""
    environ = os.environ if environ is None else environ
    valid = variable_names()
    # Compared without the prefix, which every name shares and which would make any two close.
    tails = {name.removeprefix(ENV_PREFIX): name for name in valid}
    messages = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in valid:
            continue
        message = f"{name} matches no setting"
        close = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), list(tails), n=1)
        if close:
            message += f" (did you mean {tails[close[0]]}?)"
        messages.append(message)
    return messages
