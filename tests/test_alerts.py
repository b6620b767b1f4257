"""deploy/prometheus-rules.yaml: a valid rules file whose every metric the daemon exposes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_dashboard import METRIC_NAME, exposed_names

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus-rules.yaml"


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    [group] = document["groups"]
    assert group["name"] == "s3batchd"
    found: list[dict[str, Any]] = group["rules"]
    return found


def test_every_rule_is_a_complete_alert(rules: list[dict[str, Any]]) -> None:
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["alert"].startswith("S3batchd"), rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule
        assert rule["annotations"]["summary"], rule
        expr = rule["expr"]
        for opening, closing in ("()", "{}", "[]"):
            assert expr.count(opening) == expr.count(closing), expr


def test_rules_name_only_exposed_metrics(rules: list[dict[str, Any]], tmp_path: Path) -> None:
    exposed = exposed_names(tmp_path)
    for rule in rules:
        used = set(METRIC_NAME.findall(rule["expr"]))
        assert used, rule
        assert used <= exposed, f"{sorted(used - exposed)} not exposed: {rule['alert']}"


def test_the_rules_cover_what_readiness_leaves_out(rules: list[dict[str, Any]]) -> None:
    used = {name for rule in rules for name in METRIC_NAME.findall(rule["expr"])}
    wanted = {
        "s3batchd_ready",
        "s3batchd_upstream_up",
        "s3batchd_upload_failures_total",
        "s3batchd_parked_batches",
        "s3batchd_recovery_lost_objects_total",
        "s3batchd_spool_bytes",
        "s3batchd_stranded_batches",
    }
    assert not wanted - used, sorted(wanted - used)
