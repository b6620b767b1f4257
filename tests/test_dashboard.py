"""deploy/grafana/s3batchd-dashboard.json only queries metrics the daemon exposes."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from s3batchd.compaction.stats import CompactionStats
from s3batchd.config import SpoolConfig
from s3batchd.server.metrics import Metrics
from s3batchd.upload.follow import BucketFollow

if TYPE_CHECKING:
    from s3batchd.batching.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "s3batchd-dashboard.json"
DATASOURCE_UID = "${DS_PROMETHEUS}"
METRIC_NAME = re.compile(r"\bs3batchd_[a-zA-Z0-9_]+")


@dataclass
class FakeStats:
    requests: Counter[tuple[str, str]] = field(
        default_factory=lambda: Counter({("PutObject", "ok"): 4, ("UploadPart", "http_503"): 1})
    )
    retries: int = 1
    batches: int = 2
    records: int = 300
    bytes: int = 1 << 20

    def snapshot(self) -> dict[tuple[str, str], int]:
        return dict(self.requests)

    def failure_counts(self) -> dict[str, int]:
        return {"access_denied": 1}


@dataclass
class FakeUploader:
    stats: FakeStats = field(default_factory=FakeStats)
    pending: int = 1
    pending_batch_ids: list[str] = field(default_factory=list)
    parked: list[Any] = field(default_factory=list)


@dataclass
class FakeBatcher:
    sealed_by_reason: dict[str, int] = field(default_factory=lambda: {"linger": 2, "bytes": 1})
    open_batches: int = 1
    open_batch_ids: list[str] = field(default_factory=list)
    stranded: dict[str, object] = field(default_factory=dict)


@dataclass
class FakeFollower:
    """What ``metrics._FollowCollector`` reads from the catalog's follower (one bucket)."""

    buckets: dict[str, BucketFollow] = field(
        default_factory=lambda: {"b": BucketFollow("b", newest_uploaded=1.0, last_round=1.0)}
    )
    errors: Counter[str] = field(default_factory=lambda: Counter({"list": 1}))
    indexes_learned: int = 3
    rows: int = 300
    retention_s: float = 3600.0
    on_learned: Callable[[float], None] | None = None


@dataclass
class FakeSettings:
    spool: SpoolConfig


@dataclass
class FakeSharedCatalog:
    """What the collector reads of the PostgreSQL catalog."""

    rows: int | None = 10
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class FakeShared:
    """What the collector reads of the shared catalog's writer."""

    catalog: FakeSharedCatalog = field(default_factory=FakeSharedCatalog)
    pending: int = 0
    dropped_batches: int = 0


@dataclass
class FakePipeline:
    """What ``metrics._PipelineCollector`` reads from a pipeline."""

    settings: FakeSettings
    uploader: FakeUploader = field(default_factory=FakeUploader)
    batcher: FakeBatcher = field(default_factory=FakeBatcher)
    spool_bytes: int = 4096
    recovery_lost_objects: int = 0
    upstream_up: bool | None = True
    last_reasons: list[str] | None = field(default_factory=list)
    catalog_rows: int | None = 0
    shared: FakeShared | None = field(default_factory=FakeShared)
    follower: FakeFollower | None = field(default_factory=FakeFollower)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every sample name the daemon's /metrics can carry."""
    return exposed_names(tmp_path_factory.mktemp("spool"))


def exposed_names(spool_dir: Path) -> set[str]:
    """Every sample name the daemon's /metrics can carry (``spool_dir``: an empty spool)."""
    metrics = Metrics(put_price_per_1000_usd=0.005)
    spool = SpoolConfig(dir=spool_dir)
    metrics.watch(cast("Pipeline", FakePipeline(settings=FakeSettings(spool=spool))))
    metrics.watch_compaction(CompactionStats(), erase_deadline_s=90_000.0)
    metrics.requests.labels("PutObject", "200").inc()
    text = generate_latest(metrics.registry).decode()
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and templating queries."""
    found = [
        target["expr"] for panel in all_panels(dashboard) for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            found.append(query["query"] if isinstance(query, dict) else query)
    return found


def test_exposed_names_are_collected(exposed: set[str]) -> None:
    assert "s3batchd_requests_total" in exposed
    assert "s3batchd_batches_sealed_total" in exposed  # from the pipeline collector
    assert "s3batchd_ack_latency_seconds_bucket" in exposed
    assert "s3batchd_spool_quota_bytes" in exposed


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"]
    assert dashboard["title"]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert len(ids) == len(set(ids))


def test_every_panel_has_a_title_and_the_datasource(dashboard: dict[str, Any]) -> None:
    for panel in all_panels(dashboard):
        assert panel.get("title"), panel
        assert panel.get("datasource", {}).get("uid") == DATASOURCE_UID, panel["title"]
        assert panel.get("gridPos"), panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
            assert target["expr"].strip(), panel["title"]
        if panel["type"] != "row":
            assert panel.get("targets"), panel["title"]


def test_queries_use_only_exposed_metrics(dashboard: dict[str, Any], exposed: set[str]) -> None:
    for expr in expressions(dashboard):
        used = set(METRIC_NAME.findall(expr))
        assert used, f"no s3batchd metric in {expr!r}"
        assert used <= exposed, f"{sorted(used - exposed)} not exposed by the daemon: {expr!r}"
        for opening, closing in ("()", "{}", "[]"):
            assert expr.count(opening) == expr.count(closing), expr
        if "histogram_quantile" in expr:
            assert "_bucket" in expr, expr
            assert "le)" in expr, expr


def test_dashboard_covers_the_main_metrics(dashboard: dict[str, Any]) -> None:
    used = {name for expr in expressions(dashboard) for name in METRIC_NAME.findall(expr)}
    wanted = {
        "s3batchd_requests_total",
        "s3batchd_ack_latency_seconds_bucket",
        "s3batchd_batches_sealed_total",
        "s3batchd_batch_records_sum",
        "s3batchd_batch_bytes_sum",
        "s3batchd_upstream_requests_total",
        "s3batchd_upload_retries_total",
        "s3batchd_upload_seconds_bucket",
        "s3batchd_spool_bytes",
        "s3batchd_spool_quota_bytes",
        "s3batchd_pending_batches",
        "s3batchd_open_batches",
        "s3batchd_spool_oldest_record_age_seconds",
        "s3batchd_quarantined_files",
        "s3batchd_put_requests_avoided",
        "s3batchd_estimated_savings_usd",
    }
    assert not wanted - used, f"not on the dashboard: {sorted(wanted - used)}"


def test_operations_guide_names_only_exposed_metrics(exposed: set[str]) -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    named = set(METRIC_NAME.findall(text))
    assert "s3batchd_spool_quota_bytes" in named
    unknown = [name for name in named if name not in exposed and name + "_bucket" not in exposed]
    assert not unknown, f"docs/operations.md names metrics the daemon does not expose: {unknown}"
