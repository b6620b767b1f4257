"""``s3batchd status``: a human summary of a running daemon, read from its admin listener."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from s3batchd.compaction.stats import PASS_RESULTS

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def fetch(base_url: str, timeout: float = 5) -> tuple[dict[str, object], Samples]:
    """The daemon's readiness answer and its metric samples."""
    try:
        with urllib.request.urlopen(base_url + "/readyz", timeout=timeout) as answer:  # noqa: S310
            ready = json.loads(answer.read())
    except urllib.error.HTTPError as exc:  # 503: not ready, with reasons
        ready = json.loads(exc.read())
    with urllib.request.urlopen(base_url + "/metrics", timeout=timeout) as answer:  # noqa: S310
        text = answer.read().decode()
    samples: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return ready, samples


def _total(samples: Samples, name: str) -> float:
    """Summed over every label (several workers: over ``worker`` too)."""
    return sum(samples.get(name, {}).values())


def _largest(samples: Samples, name: str) -> float:
    return max(samples.get(name, {}).values(), default=0.0)


def _by(samples: Samples, name: str, label: str) -> dict[str, float]:
    """Summed per value of ``label`` (over the others, e.g. ``worker``)."""
    totals: dict[str, float] = defaultdict(float)
    for labels, value in samples.get(name, {}).items():
        totals[dict(labels)[label]] += value
    return dict(totals)


def _size(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


def is_ready(ready: dict[str, object]) -> bool:
    """Whether the readiness answer says ready (``s3batchd status`` exits 1 otherwise)."""
    return ready.get("status") == "ready"


def _savings(samples: Samples) -> str:
    """Never negative: until enough objects are uploaded, the batches' own PUT-class requests
    (tar, index, parts) outnumber the PUTs they replaced, and the metric is below zero."""
    avoided = _total(samples, "s3batchd_put_requests_avoided")
    if avoided <= 0:
        return "no savings yet (the batches' own requests still outnumber the objects uploaded)"
    return (
        f"{avoided:.0f} PUT requests avoided, "
        f"about ${_total(samples, 's3batchd_estimated_savings_usd'):.4f}"
    )


def render(ready: dict[str, object], samples: Samples) -> str:
    """The summary, a few lines of text."""
    reasons = ready.get("reasons")
    listed = [str(reason) for reason in reasons] if isinstance(reasons, list) else []
    state = "ready" if is_ready(ready) else "NOT READY: " + "; ".join(listed)
    warnings = ready.get("warnings")
    if isinstance(warnings, list) and warnings:  # upstream or bucket trouble: writes go on
        state += "; warnings: " + "; ".join(str(warning) for warning in warnings)
    sealed = _by(samples, "s3batchd_batches_sealed_total", "reason")
    by_reason = ", ".join(f"{reason} {count:.0f}" for reason, count in sorted(sealed.items()))
    upstream = _total(samples, "s3batchd_upstream_requests_total")
    records = _total(samples, "s3batchd_records_uploaded_total")
    lines = [
        f"state:     {state}",
        f"spool:     {_size(_total(samples, 's3batchd_spool_bytes'))} of "
        f"{_size(_total(samples, 's3batchd_spool_quota_bytes'))}; "
        f"{_total(samples, 's3batchd_open_batches'):.0f} open, "
        f"{_total(samples, 's3batchd_pending_batches'):.0f} waiting for upload; oldest "
        f"{_largest(samples, 's3batchd_spool_oldest_record_age_seconds'):.1f} s; "
        f"{_total(samples, 's3batchd_quarantined_files'):.0f} quarantined",
        f"received:  {_total(samples, 's3batchd_requests_total'):.0f} requests, "
        f"{_size(_total(samples, 's3batchd_received_bytes_total'))}",
        f"batches:   sealed {by_reason or 'none'}; uploaded "
        f"{_total(samples, 's3batchd_batches_uploaded_total'):.0f} with {records:.0f} objects",
        f"upstream:  {upstream:.0f} requests, "
        f"{_total(samples, 's3batchd_upload_retries_total'):.0f} retried attempts",
        _parked_line(samples),
        f"savings:   {_savings(samples)}",
    ]
    if "s3batchd_catalog_rows" in samples:
        lines.append(_follow_line(samples))
    if "s3batchd_compaction_passes_total" in samples:  # compaction.enabled
        lines.append(_compaction_line(samples))
    return "\n".join(lines)


def _compaction_line(samples: Samples) -> str:
    """The daemon's compaction passes: what they did, what dead bytes are left."""
    passes = _by(samples, "s3batchd_compaction_passes_total", "result")
    done = ", ".join(f"{result} {passes.get(result, 0):.0f}" for result in PASS_RESULTS)
    requests = _total(samples, "s3batchd_compaction_requests_total")
    line = (
        f"compaction: passes {done}; "
        f"{_total(samples, 's3batchd_compaction_batches_rewritten_total'):.0f} batches "
        f"rewritten ({_size(_total(samples, 's3batchd_compaction_bytes_rewritten_total'))}), "
        f"{requests:.0f} requests"
    )
    dead = _by(samples, "s3batchd_compaction_dead_bytes", "bucket")
    if not dead:
        return line + "; no pass done yet"
    objects = _total(samples, "s3batchd_compaction_dead_objects")
    cost = _total(samples, "s3batchd_compaction_dead_cost_usd_month")
    oldest = _largest(samples, "s3batchd_compaction_oldest_unerased_delete_seconds")
    return (
        line + f"; dead: {objects:.0f} objects, {_size(sum(dead.values()))} in "
        f"{len(dead)} buckets, about ${cost:.4f} a month; oldest unerased delete {oldest:.0f} s"
    )


def _follow_line(samples: Samples) -> str:
    """The catalog and how far it follows the buckets (catalog.follow)."""
    up = _by(samples, "s3batchd_catalog_follow_up", "bucket")
    done = _by(samples, "s3batchd_catalog_backfill_done", "bucket")
    line = (
        f"catalog:   {_total(samples, 's3batchd_catalog_rows'):.0f} objects; following "
        f"{len(up)} buckets, {sum(1 for v in up.values() if v)} up to date"
    )
    lag = samples.get("s3batchd_catalog_follow_lag_seconds", {})
    if lag:
        line += f", newest index learned uploaded {min(lag.values()):.0f} s ago"
    behind = _by(samples, "s3batchd_catalog_backfill_behind_seconds", "bucket")
    pending = sorted(bucket for bucket, value in done.items() if not value)
    if not pending:
        return line + ("; backfill done" if done else "")
    indexes = _by(samples, "s3batchd_catalog_backfill_indexes", "bucket")
    objects = _by(samples, "s3batchd_catalog_backfill_objects", "bucket")
    progress = ", ".join(
        f"{bucket} {indexes.get(bucket, 0):.0f} indexes, {objects.get(bucket, 0):.0f} objects, "
        f"{behind.get(bucket, 0):.0f} s behind"
        for bucket in pending
    )
    return line + f"; backfill running: {progress}"


def _counts(counts: dict[str, float]) -> str:
    """``name count`` pairs, largest first, zeros left out."""
    ranked = sorted((name for name, n in counts.items() if n), key=lambda n: (-counts[n], n))
    return ", ".join(f"{name} {counts[name]:.0f}" for name in ranked)


def _parked_line(samples: Samples) -> str:
    """Parked batches by bucket (``s3batchd parked list`` has the details) and failed upload
    attempts by reason."""
    batches = _by(samples, "s3batchd_parked_batches", "bucket")
    failures = _counts(_by(samples, "s3batchd_upload_failures_total", "reason")) or "none"
    total = sum(batches.values())
    if not total:
        return f"parked:    none; failed attempts: {failures}"
    return (
        f"parked:    {total:.0f} batches ({_size(_total(samples, 's3batchd_parked_bytes'))}): "
        f"{_counts(batches)} (see `s3batchd parked list`); failed attempts: {failures}"
    )
