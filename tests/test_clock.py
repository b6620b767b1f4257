"""The write clock: stamps never go backwards, whatever the system clock does."""

from __future__ import annotations

import threading

import pytest

from s3batchd import clock
from s3batchd.clock import TICK_S, WriteClock


def test_stamps_follow_the_wall_clock_and_never_go_back(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_800_000_000.0]
    monkeypatch.setattr(clock, "wall", lambda: now[0])
    stamps = WriteClock()
    first = stamps.now()
    assert first == now[0]
    now[0] -= 5.0  # the system clock steps back
    second, third = stamps.now(), stamps.now()
    assert first < second < third
    assert 0 < second - first <= 2 * TICK_S  # one tick, to the float's resolution
    now[0] += 10.0  # and catches up: stamps are the wall clock again
    assert stamps.now() == now[0]


def test_observe_moves_later_stamps_past_a_stored_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock, "wall", lambda: 1_800_000_000.0)
    stamps = WriteClock()
    stamps.observe(1_800_000_100.0)  # written before a restart, the clock was ahead then
    assert stamps.now() > 1_800_000_100.0
    stamps.observe(1.0)  # never moves it back
    assert stamps.now() > 1_800_000_100.0


def test_stamps_from_many_threads_are_all_distinct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock, "wall", lambda: 1_800_000_000.0)
    stamps = WriteClock()
    taken: list[list[float]] = [[] for _ in range(4)]

    def take(out: list[float]) -> None:
        out.extend(stamps.now() for _ in range(2000))

    threads = [threading.Thread(target=take, args=(out,)) for out in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    every = [stamp for out in taken for stamp in out]
    assert len(set(every)) == len(every) == 8000
    assert all(out == sorted(out) and len(set(out)) == len(out) for out in taken)


def test_observe_moves_later_stamps_to_a_later_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catalogs compare stamps to the millisecond (an index's precision): a write after a
    restart with the clock behind lands in a later millisecond than the stored one, not in
    the same one (where the batch ids, which follow the wall clock, would decide)."""
    monkeypatch.setattr(clock, "wall", lambda: 1_800_000_000.0)
    stamps = WriteClock()
    stamps.observe(1_800_000_100.1234)
    assert round(stamps.now() * 1_000_000) // 1000 == 1_800_000_100_124
