"""What is live and what is dead in a bucket's batches, from their indexes alone.

Pure: the indexes go in, a ``Survey`` comes out. The rules are the readers'
(docs/index-format.md): of the objects of a key, the one with the latest ``last_modified`` (then
the larger batch id, then the later place in its batch) is the current write; a tombstone hides
every object of its key written at or before it. Every other object is dead, since the moment
the next write of its key or the first tombstone after it came. Batches a compacted batch
``replaces`` are left out: their live objects are in that batch already; their tar and index
wait for ``compaction.grace_s`` and are then deleted. Which tombstones may go is
compaction/tombstones.py's (the same ordering, by write stamp).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from s3batchd.index import parse_time, replaced_batches

#: What a GET of live members costs in requests per this many bytes: the longest range a
#: rewrite reads with one GET (``rewrite.write_batch``; one GET at least).
SPAN_BYTES = 4 * 1024 * 1024
GB = 1_000_000_000
#: Tar bytes of one member besides its padded data: a PAX header block, its records and the
#: ustar header (docs/index-format.md: 1,536 with a short key and little metadata). With small
#: objects they are most of a tar: the storage a rewrite saves counts them.
MEMBER_HEADERS = 1536
_BLOCK = 512


@dataclass(frozen=True, slots=True)
class Listed:
    """One index object of the bucket: its key, when it was written, and its document."""

    key: str
    written: float
    """Unix time of the index object's ``LastModified``."""
    document: Mapping[str, Any]


@dataclass(slots=True)
class BatchState:
    """One batch as the survey sees it."""

    listed: Listed
    live: list[dict[str, Any]] = field(default_factory=list)
    """The ``objects`` entries that are current writes, in tar order."""
    live_bytes: int = 0
    dead_bytes: int = 0
    dead_objects: int = 0
    dead_footprint: int = 0
    """Tar bytes of the dead objects: padded data plus ``MEMBER_HEADERS`` each."""
    oldest_death: float | None = None
    """Unix time the longest-dead object of the batch died (deleted or overwritten)."""
    last_death: float | None = None
    """Unix time the last of its dead objects died."""

    @property
    def batch_id(self) -> str:
        """The batch id."""
        batch_id: str = self.listed.document["batch_id"]
        return batch_id

    @property
    def dead_ratio(self) -> float:
        """Dead share of the batch's object bytes (0 for a batch without object bytes)."""
        total = self.live_bytes + self.dead_bytes
        return self.dead_bytes / total if total else 0.0

    @property
    def tar_size(self) -> int:
        """Bytes of the batch's tar."""
        size: int = self.listed.document["tar"]["size"]
        return size


@dataclass(frozen=True, slots=True)
class Replaced:
    """A batch some compacted batch replaces whose index is still in the bucket."""

    batch_id: str
    tar_key: str
    index_key: str
    by: str
    """The compacted batch's id."""
    since: float
    """Unix time the compacted batch's index was written (the grace period starts)."""


@dataclass(slots=True)
class Survey:
    """Every batch of a bucket prefix: the current ones and the replaced ones."""

    batches: list[BatchState]
    replaced: list[Replaced]

    @property
    def dead_bytes(self) -> int:
        """Dead object bytes in the current batches."""
        return sum(b.dead_bytes for b in self.batches)

    @property
    def dead_objects(self) -> int:
        """Dead objects in the current batches."""
        return sum(b.dead_objects for b in self.batches)

    @property
    def live_bytes(self) -> int:
        """Live object bytes."""
        return sum(b.live_bytes for b in self.batches)

    def oldest_death(self) -> float | None:
        """When the longest-dead object still in a current batch died, None when none."""
        deaths = [b.oldest_death for b in self.batches if b.oldest_death is not None]
        return min(deaths, default=None)


@dataclass(frozen=True, slots=True)
class Prices:
    """What storage and requests cost (``compaction.*_price*``, ``metrics.put_price...``)."""

    storage_gb_month: float
    get_per_1000: float
    put_per_1000: float


@dataclass(frozen=True, slots=True)
class Rules:
    """When a batch is rewritten (the ``compaction`` settings)."""

    min_dead_ratio: float
    payback_days: float
    erase_within_s: float
    prices: Prices


def requests_for(batch: BatchState) -> tuple[int, int]:
    """GETs and PUTs a rewrite of ``batch`` alone costs (its share of a merged one is less)."""
    gets = -(-batch.live_bytes // SPAN_BYTES) if batch.live_bytes else 0
    return gets, 2


def monthly_storage_usd(size: int, prices: Prices) -> float:
    """What ``size`` bytes cost to store for a month."""
    return size / GB * prices.storage_gb_month


def should_rewrite(batch: BatchState, rules: Rules, now: float) -> str | None:
    """Why ``batch`` is rewritten (``"erase"``, ``"dead"``), or None. The ratio is of object
    bytes; the storage saved counts the dead members' tar headers too."""
    if batch.dead_objects == 0:
        return None
    if (
        rules.erase_within_s > 0
        and batch.oldest_death is not None
        and batch.oldest_death <= now - rules.erase_within_s
    ):
        return "erase"
    if batch.dead_ratio < rules.min_dead_ratio:
        return None
    gets, puts = requests_for(batch)
    cost = gets * rules.prices.get_per_1000 / 1000 + puts * rules.prices.put_per_1000 / 1000
    saved = monthly_storage_usd(batch.dead_footprint, rules.prices) * rules.payback_days / 30
    return "dead" if saved >= cost else None


def survey(listed: Iterable[Listed]) -> Survey:
    """Live and dead objects of every current batch, and the replaced batches."""
    documents = list(listed)
    present = {listing.document["batch_id"]: listing for listing in documents}
    replaced: dict[str, Replaced] = {}
    for listing in documents:
        for old in replaced_batches(listing.document):
            found = present.get(old)
            if found is not None:
                by = listing.document["batch_id"]
                tar = found.document["tar"]["key"]
                replaced[old] = Replaced(old, tar, found.key, by, listing.written)
    current = [BatchState(x) for x in documents if x.document["batch_id"] not in replaced]
    _classify(current)
    return Survey(current, sorted(replaced.values(), key=lambda r: r.batch_id))


def _classify(batches: list[BatchState]) -> None:
    # Per key: its writes as (stamp, batch id, place) -> (batch, entry), and its deletes.
    writes: dict[str, list[tuple[tuple[str, str, int], BatchState, dict[str, Any]]]] = {}
    deletes: dict[str, list[str]] = {}
    for batch in batches:
        document = batch.listed.document
        for place, entry in enumerate(document["objects"]):
            order = (entry["last_modified"], batch.batch_id, place)
            writes.setdefault(entry["key"], []).append((order, batch, entry))
        for tombstone in document.get("tombstones", ()):
            deletes.setdefault(tombstone["key"], []).append(tombstone["deleted_at"])
    for key, versions in writes.items():
        versions.sort(key=lambda version: version[0])
        stamps = sorted(deletes.get(key, ()))
        for n, (order, batch, entry) in enumerate(versions):
            # Timestamps have one format: their text sorts as their time.
            at = bisect.bisect_left(stamps, order[0])
            deleted = stamps[at] if at < len(stamps) else None
            newer = versions[n + 1][0][0] if n + 1 < len(versions) else None
            deaths = [stamp for stamp in (deleted, newer) if stamp is not None]
            if not deaths:
                batch.live.append(entry)
                batch.live_bytes += entry["length"]
                continue
            died = parse_time(min(deaths))
            batch.dead_bytes += entry["length"]
            batch.dead_objects += 1
            batch.dead_footprint += -(-entry["length"] // _BLOCK) * _BLOCK + MEMBER_HEADERS
            if batch.oldest_death is None or died < batch.oldest_death:
                batch.oldest_death = died
            if batch.last_death is None or died > batch.last_death:
                batch.last_death = died
    for batch in batches:
        # Tar order, as read: the live list was filled key by key.
        places = {id(entry): n for n, entry in enumerate(batch.listed.document["objects"])}
        batch.live.sort(key=lambda entry: places[id(entry)])
