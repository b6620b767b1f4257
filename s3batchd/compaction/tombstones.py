"""Which tombstones and attribute updates outlive the batches a pass removes, and which batches
of nothing but dead objects and such tombstones a pass deletes outright.

Pure: the indexes of every batch in the bucket go in (current ones and replaced ones waiting
for their grace period: readers see both), decisions come out.

The readers' rule (survey.py, catalog/store.py, catalog/postgres.py) orders a tombstone and a
write by **write stamp**, never by batch id or by when a batch arrived: a tombstone stamped
``d`` hides every write of its key stamped at or before ``d``, in any batch, present or to
come. Dropping it makes every such write visible again. So a tombstone ``(key, d)`` of a batch
being removed is dropped only when both hold:

1. **No write it hides stays in the bucket.** Every object of ``key`` stamped at or before
   ``d``, in any index of the bucket (current or replaced), lies in a batch this pass removes
   *and* that batch holds a tombstone of ``key`` stamped at or after the object: while that
   batch is in the bucket (its grace period) its own tombstone hides the object, and both go
   with its index in one DELETE. A write hidden only by a tombstone of another batch keeps the
   tombstone (the batches are deleted one by one; a pass may stop between two deletes).
2. **No write it hides can still arrive.** ``d`` is older than
   ``compaction.tombstone_horizon_s`` (30 days; 0: never): a write is stamped when a daemon
   acknowledges it and reaches the bucket when its batch is uploaded, which a down upstream or
   a parked batch can delay by days. A batch held back longer than the horizon whose objects
   were deleted meanwhile would show them again: raise the horizon above the longest outage
   a spool may have to ride out.

An attribute update (``key``, ``object_modified``, ``updated_at``) only changes the object it
names; it is dropped when ``updated_at`` is older than the horizon and no object of ``key``
stamped ``object_modified`` is carried into the new batch or lies in a batch this pass does not
remove (an object of a removed batch that is not carried is dead: its headers show nowhere).

Without the horizon: of several tombstones of one key carried into a new batch only the latest
travels (it hides all the others hide, from the same batch), and of several updates of one
object only the latest (readers apply the latest).

A batch with no live object whose every tombstone and update may be dropped by these rules
(with that batch alone removed), whose index was written and whose last object died more than
``compaction.grace_s`` ago, is deleted, tar then index, without a new batch (``emptied``): a
batch of nothing but tombstones (every delete's batch, when nothing else came in its linger
time) is never rewritten for dead bytes, and would otherwise stay for ever.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from s3batchd.compaction.survey import BatchState, Listed
from s3batchd.index import parse_time


@dataclass(frozen=True, slots=True)
class Travelling:
    """The tombstones and updates a new batch carries, and how many of them were dropped."""

    tombstones: list[Mapping[str, Any]]
    updates: list[Mapping[str, Any]]
    tombstones_dropped: int
    updates_dropped: int


@dataclass(slots=True)
class BucketView:
    """Every write of every index in the bucket, by key, and each batch's own tombstones."""

    horizon_s: float
    """``compaction.tombstone_horizon_s`` (0: tombstones and updates are never dropped)."""
    now: float
    writes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    """Key -> its objects as (``last_modified``, batch id)."""
    own: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    """(Batch id, key) -> the ``deleted_at`` of the batch's tombstones of the key."""

    @classmethod
    def of(cls, listed: Iterable[Listed], *, horizon_s: float, now: float) -> BucketView:
        """The view of the bucket's indexes ``listed`` (every one, replaced ones too)."""
        view = cls(horizon_s, now)
        for listing in listed:
            document = listing.document
            batch_id = document["batch_id"]
            for entry in document["objects"]:
                view.writes.setdefault(entry["key"], []).append((entry["last_modified"], batch_id))
            for tombstone in document.get("tombstones", ()):
                view.own.setdefault((batch_id, tombstone["key"]), []).append(
                    tombstone["deleted_at"]
                )
        return view

    def _old(self, stamp: str) -> bool:
        return self.horizon_s > 0 and parse_time(stamp) <= self.now - self.horizon_s

    def hides_nothing(self, tombstone: Mapping[str, Any], removed: set[str]) -> bool:
        """Whether ``tombstone`` may go with the batches ``removed`` (rules 1 and 2)."""
        key, deleted = tombstone["key"], tombstone["deleted_at"]
        if not self._old(deleted):
            return False
        # Timestamps have one format: their text sorts as their time.
        for stamp, batch_id in self.writes.get(key, ()):
            if stamp > deleted:
                continue
            if batch_id not in removed:
                return False
            if not any(own >= stamp for own in self.own.get((batch_id, key), ())):
                return False
        return True

    def names_nothing(
        self, update: Mapping[str, Any], removed: set[str], carried: set[tuple[str, str]]
    ) -> bool:
        """Whether ``update`` may go: old enough, and its object neither carried (``carried``:
        (key, ``last_modified``) of the new batch's objects) nor in a batch not removed."""
        key, of = update["key"], update["object_modified"]
        if not self._old(update["updated_at"]) or (key, of) in carried:
            return False
        return all(b in removed for stamp, b in self.writes.get(key, ()) if stamp == of)

    def travelling(
        self, documents: Sequence[Mapping[str, Any]], carried: Iterable[Mapping[str, Any]]
    ) -> Travelling:
        """What the new batch replacing the batches of ``documents`` carries of their
        tombstones and updates, its objects being ``carried``."""
        removed = {document["batch_id"] for document in documents}
        objects = {(entry["key"], entry["last_modified"]) for entry in carried}
        latest: dict[str, Mapping[str, Any]] = {}
        updates: dict[tuple[str, str], Mapping[str, Any]] = {}
        tombstones_in = updates_in = 0
        for document in documents:
            for tombstone in document.get("tombstones", ()):
                tombstones_in += 1
                if self.hides_nothing(tombstone, removed):
                    continue
                held = latest.get(tombstone["key"])
                if held is None or tombstone["deleted_at"] > held["deleted_at"]:
                    latest[tombstone["key"]] = tombstone
            for update in document.get("updates", ()):
                updates_in += 1
                if self.names_nothing(update, removed, objects):
                    continue
                name = (update["key"], update["object_modified"])
                held = updates.get(name)
                if held is None or update["updated_at"] > held["updated_at"]:
                    updates[name] = update
        return Travelling(
            list(latest.values()),
            list(updates.values()),
            tombstones_in - len(latest),
            updates_in - len(updates),
        )

    def emptied(self, batch: BatchState, *, grace_s: float) -> bool:
        """Whether a current batch may be deleted outright: no live object, its index written
        and its last object dead longer than ``grace_s`` ago, every tombstone and update
        droppable with it alone removed."""
        document = batch.listed.document
        since = self.now - grace_s
        if batch.live or self.horizon_s <= 0 or batch.listed.written > since:
            return False
        if batch.last_death is not None and batch.last_death > since:
            return False
        removed = {document["batch_id"]}
        tombstones = document.get("tombstones", ())
        updates = document.get("updates", ())
        return all(self.hides_nothing(t, removed) for t in tombstones) and all(
            self.names_nothing(u, removed, set()) for u in updates
        )
