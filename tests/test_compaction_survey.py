"""The survey's rules without a server: which objects are dead, since when, and which batches
the rules choose."""

from __future__ import annotations

from typing import Any

from s3batchd.compaction.survey import Listed, Prices, Rules, should_rewrite, survey
from s3batchd.index import parse_time

A = "20270115T000000000Z-host-0123abcd-000001"
B = "20270115T000001000Z-host-0123abcd-000002"
C = "20270116T000000000Z-compactor-0123abcd-000001"
PRICES = Prices(storage_gb_month=0.023, get_per_1000=0.0004, put_per_1000=0.005)


def _object(key: str, length: int, stamp: str) -> dict[str, Any]:
    return {"key": key, "length": length, "last_modified": stamp, "offset": 1536}


def _index(batch_id: str, objects: list[dict[str, Any]], **extra: Any) -> Listed:
    document = {
        "version": 2 if "replaces" in extra else 1,
        "batch_id": batch_id,
        "tar": {"key": f"p/{batch_id}.tar", "size": 10240},
        "objects": objects,
        **extra,
    }
    return Listed(f"p/{batch_id}.index.json", 0.0, document)


def test_overwrites_and_tombstones_kill_older_writes_since_the_next_event() -> None:
    first = _index(
        A,
        [
            _object("kept", 10, "2027-01-15T00:00:00.000Z"),
            _object("over", 20, "2027-01-15T00:00:00.000Z"),
            _object("gone", 30, "2027-01-15T00:00:00.000Z"),
            _object("same", 40, "2027-01-15T00:00:05.000Z"),
        ],
    )
    second = _index(
        B,
        [
            _object("over", 25, "2027-01-15T00:00:02.000Z"),
            # The same stamp: the larger batch id is the later write.
            _object("same", 45, "2027-01-15T00:00:05.000Z"),
        ],
        # At the object's own stamp: a delete hides writes at or before it.
        tombstones=[{"key": "gone", "deleted_at": "2027-01-15T00:00:00.000Z"}],
    )
    found = survey([first, second])
    a, b = found.batches
    assert [e["key"] for e in a.live] == ["kept"]
    assert (a.live_bytes, a.dead_bytes, a.dead_objects) == (10, 90, 3)
    assert a.oldest_death == parse_time("2027-01-15T00:00:00.000Z")
    assert [e["key"] for e in b.live] == ["over", "same"]
    assert b.dead_objects == 0
    assert found.replaced == []


def test_replaced_batches_leave_the_survey_until_they_are_deleted() -> None:
    old = _index(A, [_object("k", 10, "2027-01-15T00:00:00.000Z")])
    new = _index(C, [_object("k", 10, "2027-01-15T00:00:00.000Z")], replaces=[A, B])
    found = survey([old, new])
    assert [batch.batch_id for batch in found.batches] == [C]
    assert found.batches[0].dead_objects == 0  # not a newer write of its own old copy
    assert [(r.batch_id, r.by, r.index_key) for r in found.replaced] == [
        (A, C, f"p/{A}.index.json")
    ]  # B is gone already


def test_the_rules_weigh_ratio_payback_and_the_erase_deadline() -> None:
    rules = Rules(min_dead_ratio=0.3, payback_days=30, erase_within_s=86400, prices=PRICES)
    big = survey(
        [
            _index(
                A,
                [
                    _object("live", 1_000_000, "2027-01-15T00:00:00.000Z"),
                    _object("dead", 1_000_000, "2027-01-15T00:00:00.000Z"),
                    _object("dead", 1, "2027-01-15T00:00:01.000Z"),
                ],
            )
        ]
    ).batches[0]
    died = parse_time("2027-01-15T00:00:01.000Z")
    assert should_rewrite(big, rules, now=died + 60) == "dead"  # 0.046 USD/month > 2 PUTs
    small = survey(
        [
            _index(
                A,
                [
                    _object("dead", 1000, "2027-01-15T00:00:00.000Z"),
                    _object("dead", 1, "2027-01-15T00:00:01.000Z"),
                ],
            )
        ]
    ).batches[0]
    assert should_rewrite(small, rules, now=died + 60) is None  # does not pay for itself
    assert should_rewrite(small, rules, now=died + 86400) == "erase"
    off = Rules(min_dead_ratio=0.3, payback_days=30, erase_within_s=0, prices=PRICES)
    assert should_rewrite(small, off, now=died + 10**9) is None
