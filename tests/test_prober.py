"""The probe's bounded set of buckets: the most recently written, forgotten after a while."""

from __future__ import annotations

from s3batchd.prober import RecentBuckets


def test_only_the_most_recently_written_buckets_are_kept() -> None:
    recent = RecentBuckets(limit=3, forget_s=100)
    for number in range(10_000):
        recent.written(f"b{number}", now=float(number) / 1000)
    assert recent.recent(now=10.0) == ["b9999", "b9998", "b9997"]


def test_writing_again_makes_a_bucket_the_newest() -> None:
    recent = RecentBuckets(limit=2, forget_s=100)
    recent.written("a", now=1)
    recent.written("b", now=2)
    recent.written("a", now=3)
    recent.written("c", now=4)  # b is the oldest now, not a
    assert recent.recent(now=5) == ["c", "a"]


def test_buckets_not_written_for_forget_s_are_forgotten() -> None:
    recent = RecentBuckets(limit=10, forget_s=60)
    recent.written("old", now=0)
    recent.written("new", now=50)
    assert recent.recent(now=60) == ["new", "old"]
    assert recent.recent(now=61) == ["new"]
    assert recent.recent(now=111) == []
