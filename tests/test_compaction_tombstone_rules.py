"""The rules of compaction/tombstones.py without a server: which tombstones and attribute
updates travel into a new batch, and which batches are deleted outright."""

from __future__ import annotations

from typing import Any

from s3batchd.compaction.survey import Listed, survey
from s3batchd.compaction.tombstones import BucketView
from s3batchd.index import parse_time

A = "20270115T000000000Z-host-0123abcd-000001"
B = "20270115T000001000Z-host-0123abcd-000002"
C = "20270116T000000000Z-compactor-0123abcd-000001"
T0 = "2027-01-15T00:00:00.000Z"
T1 = "2027-01-15T00:00:01.000Z"
T2 = "2027-01-15T00:00:02.000Z"
#: A month after the stamps: every one of them is older than a day's horizon.
LATER = parse_time(T0) + 30 * 86400
DAY = 86400.0


def _index(batch_id: str, objects: list[tuple[str, str]], **extra: Any) -> Listed:
    document = {
        "version": 1,
        "batch_id": batch_id,
        "tar": {"key": f"p/{batch_id}.tar", "size": 10240},
        "objects": [
            {"key": key, "length": 100, "last_modified": stamp, "offset": 1536}
            for key, stamp in objects
        ],
        **extra,
    }
    return Listed(f"p/{batch_id}.index.json", 0.0, document)


def _tomb(key: str, stamp: str) -> dict[str, str]:
    return {"key": key, "deleted_at": stamp}


def _update(key: str, of: str, at: str) -> dict[str, Any]:
    return {"key": key, "object_modified": of, "updated_at": at, "headers": {}}


def test_a_tombstone_travels_while_a_write_it_hides_is_in_a_batch_kept() -> None:
    a = _index(A, [("k", T0), ("x", T0)])
    b = _index(B, [("y", T1)], tombstones=[_tomb("k", T1), _tomb("y", T0)])
    view = BucketView.of([a, b], horizon_s=DAY, now=LATER)
    # "k" is written in A, not removed; "y"'s tombstone is older than its only write.
    assert view.travelling([b.document], [b.document["objects"][0]]).tombstones == [_tomb("k", T1)]
    # A removed too, without a tombstone of "k" of its own: the tombstone still travels
    # (the two batches are deleted one by one).
    assert view.travelling([a.document, b.document], []).tombstones == [_tomb("k", T1)]
    # A holding its own tombstone of "k": both go with A's index.
    a2 = _index(A, [("k", T0)], tombstones=[_tomb("k", T0)])
    view = BucketView.of([a2, b], horizon_s=DAY, now=LATER)
    assert view.travelling([a2.document, b.document], []).tombstones == []


def test_a_replaced_batch_still_in_the_bucket_keeps_the_tombstone() -> None:
    old = _index(A, [("k", T0)])
    compacted = _index(C, [], tombstones=[_tomb("k", T1)], replaces=[A], version=2)
    view = BucketView.of([old, compacted], horizon_s=DAY, now=LATER)
    assert view.travelling([compacted.document], []).tombstones == [_tomb("k", T1)]


def test_young_tombstones_and_updates_travel_and_a_zero_horizon_keeps_all() -> None:
    b = _index(B, [], tombstones=[_tomb("k", T1)], updates=[_update("k", T0, T1)])
    now = parse_time(T2)  # one second after: younger than a day
    for view in (
        BucketView.of([b], horizon_s=DAY, now=now),
        BucketView.of([b], horizon_s=0, now=LATER),
    ):
        kept = view.travelling([b.document], [])
        assert (kept.tombstones_dropped, kept.updates_dropped) == (0, 0)
    dropped = BucketView.of([b], horizon_s=DAY, now=LATER).travelling([b.document], [])
    assert (dropped.tombstones_dropped, dropped.updates_dropped) == (1, 1)


def test_an_update_travels_while_its_object_is_carried_or_kept() -> None:
    a = _index(A, [("kept", T0)])
    b = _index(
        B,
        [("carried", T0)],
        updates=[_update("kept", T0, T1), _update("carried", T0, T1), _update("gone", T0, T1)],
    )
    view = BucketView.of([a, b], horizon_s=DAY, now=LATER)
    kept = view.travelling([b.document], b.document["objects"])
    assert sorted(u["key"] for u in kept.updates) == ["carried", "kept"]
    assert kept.updates_dropped == 1


def test_only_the_latest_tombstone_of_a_key_and_update_of_an_object_travel() -> None:
    a = _index(A, [("k", T0), ("o", T0)])
    b = _index(
        B,
        [],
        tombstones=[_tomb("k", T1), _tomb("k", T2)],
        updates=[_update("o", T0, T1), _update("o", T0, T2)],
    )
    kept = BucketView.of([a, b], horizon_s=0, now=LATER).travelling([b.document], [])
    assert kept.tombstones == [_tomb("k", T2)]
    assert kept.updates == [_update("o", T0, T2)]
    assert (kept.tombstones_dropped, kept.updates_dropped) == (1, 1)


def test_a_batch_with_nothing_to_carry_is_emptied_after_grace() -> None:
    a = _index(A, [("k", T0)])
    b = _index(B, [], tombstones=[_tomb("k", T1)])
    found = survey([a, b])
    view = BucketView.of([a, b], horizon_s=DAY, now=LATER)
    by_id = {batch.batch_id: batch for batch in found.batches}
    assert view.emptied(by_id[A], grace_s=3600)  # all dead, nothing to carry
    assert not view.emptied(by_id[B], grace_s=3600)  # its tombstone hides "k" in A
    alone = BucketView.of([b], horizon_s=DAY, now=LATER)
    assert alone.emptied(survey([b]).batches[0], grace_s=3600)
    assert not alone.emptied(survey([b]).batches[0], grace_s=LATER + 1)  # index too young
    assert not BucketView.of([b], horizon_s=0, now=LATER).emptied(survey([b]).batches[0], grace_s=0)
