"""ListObjects / ListObjectsV2 through the daemon: the bucket's own listing merged with the
keys the daemon batched (which the bucket only holds inside tars).

Pagination is by key: a page asks the bucket for the keys after the cursor (``start-after``)
and merges them with the catalog's; the continuation token (v2) or marker (v1) is the last key
or common prefix returned. A common prefix as cursor is skipped on the next page, on both
sides, so the keys under it are not listed again. Where the catalog has nothing under the
prefix (and no batch object is to be hidden), the bucket's answer is relayed unchanged, and so
is every later page of that listing (its continuation token is the bucket's, not the
daemon's); a listing that has the daemon's token stays with the daemon. Owners (v1, and v2
with ``fetch-owner=true``) are the bucket's for its objects and ``owners.py``'s for batched
ones.

The daemon's own batch objects (tars and indexes under ``upstream.prefix``) are left out of
listings that do not ask for that prefix, unless ``upstream.list_batch_objects`` is set: an
``aws s3 sync s3://bucket/ dir`` through the daemon must not download every batch. They are
contiguous in key order, so a page of the bucket's listing that ends among them is followed by
one request for the keys after them (never one request per page of them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from urllib.parse import unquote_plus
from xml.etree import ElementTree

from starlette.responses import Response

from s3batchd.catalog.postgres import PostgresCatalog
from s3batchd.catalog.store import Catalog, CatalogEntry
from s3batchd.clock import stamp_ms
from s3batchd.config import UpstreamConfig
from s3batchd.forward.passthrough import Call, forward
from s3batchd.forward.proxy import read_all
from s3batchd.handlers.listpage import (
    ListItem,
    ListQuery,
    common_prefix,
    list_xml,
    parse_list_query,
)
from s3batchd.s3.xml import parse


@dataclass(frozen=True, slots=True)
class _Page:
    items: list[ListItem]
    truncated: bool


async def list_objects_merged(call: Call) -> Response:
    """ListObjects (v1) and ListObjectsV2."""
    query = parse_list_query(call.target.query)
    if query.foreign_token:
        return await forward(call)  # a listing the bucket began: only it can go on
    pipeline = call.pipeline
    bucket = call.target.bucket
    catalog = pipeline.catalog
    allowed = call.settings.passthrough.allows(call.operation)
    hidden = hidden_prefix(call.settings.upstream, query.prefix)
    # A token of the daemon's (query.token, not foreign) means the daemon began this listing:
    # only it can go on, even when no batched key is left under the prefix.
    relayable = not query.token and not hidden
    shared = pipeline.shared.catalog if pipeline.shared is not None else None
    # A CatalogUnavailable from PostgreSQL fails the listing (503 SlowDown, errormap): batched
    # keys of other daemons would be missing from it.
    if allowed and relayable and await _nothing_batched(catalog, shared, bucket, query.prefix):
        return await forward(call)
    if shared is None:
        scan = local_scan(catalog, bucket, query.prefix)
        mine = await catalog_page(scan, query, hidden=hidden)
    else:
        mine = await _with_shared(catalog, shared, bucket, query, hidden)
    if query.fetch_owner and any(not item.prefix for item in mine.items):
        owner = await call.daemon.owners.of(call, bucket)
        mine = _Page([replace(item, owner=owner) for item in mine.items], mine.truncated)
    theirs = await _upstream_page(call, query, hidden) if allowed else _Page([], truncated=False)
    if isinstance(theirs, Response):
        return theirs
    merged: dict[str, ListItem] = {item.name: item for item in theirs.items}
    merged.update({item.name: item for item in mine.items})  # the batched object is newer
    names = sorted(merged)
    # Neither side may be listed past what was fetched of it: beyond, the other side's
    # elements are not known yet.
    bounds = [side.items[-1].name for side in (mine, theirs) if side.truncated and side.items]
    if bounds:
        names = [name for name in names if name <= min(bounds)]
    page = names[: query.max_keys]
    truncated = query.max_keys > 0 and (
        len(names) > len(page) or mine.truncated or theirs.truncated
    )
    items = [merged[name] for name in page]
    return Response(list_xml(bucket, query, items, truncated), media_type="application/xml")


#: Appended to a prefix: sorts after the keys that start with it (all but those continuing
#: with U+10FFFF itself, which the loop below then passes over one by one).
_AFTER_ALL = "\U0010ffff"


def hidden_prefix(upstream: UpstreamConfig, prefix: str) -> str:
    """The key prefix a listing of ``prefix`` leaves out: the daemon's batch objects
    (``upstream.prefix``), unless the listing asks for them (its prefix starts with
    ``upstream.prefix``), cannot reach them, or ``upstream.list_batch_objects`` is set; ""
    when nothing is left out. An empty ``upstream.prefix`` hides nothing."""
    batches = upstream.prefix
    if upstream.list_batch_objects or not batches or prefix.startswith(batches):
        return ""
    return batches if batches.startswith(prefix) else ""


#: The batched objects of a bucket under a listing's prefix after a key, in S3 order.
Scan = Callable[[str], AsyncIterator[CatalogEntry]]
#: Rows per query of the PostgreSQL catalog in a listing: the first query after a resume
#: (``catalog_page`` resumes after every common prefix, and a prefix's first key is all it
#: needs of it) asks for ``_SHARED_FIRST_ROWS``, each next one for twice as many, up to
#: ``_SHARED_PAGE_ROWS``. With 256 rows at once a top-level listing of 1,000 prefixes read
#: 256,000 rows to use 1,000 (9 s, 4.35 s of event-loop CPU).
_SHARED_FIRST_ROWS = 4
_SHARED_PAGE_ROWS = 256


def _page_sizes() -> Iterator[int]:
    size = _SHARED_FIRST_ROWS
    while True:
        yield size
        size = min(size * 2, _SHARED_PAGE_ROWS)


def local_scan(catalog: Catalog, bucket: str, prefix: str) -> Scan:
    """The daemon's own catalog as a ``Scan``."""

    async def scan(after: str) -> AsyncIterator[CatalogEntry]:
        for entry in catalog.iter_keys(bucket, prefix, after):
            yield entry

    return scan


def shared_scan(shared: PostgresCatalog, local: Catalog, bucket: str, prefix: str) -> Scan:
    """The fleet's catalog as a ``Scan``, without the objects this daemon's own deletes
    hide (not in it until their batch is uploaded; one lookup of them per page)."""

    async def scan(after: str) -> AsyncIterator[CatalogEntry]:
        for size in _page_sizes():
            rows = await shared.page(bucket, prefix, after, size)
            deletes = local.tombstones(bucket, [entry.record.key for entry in rows])
            for entry in _not_deleted(rows, deletes):
                yield entry
            if len(rows) < size:
                return
            after = rows[-1].record.key

    return scan


def unhidden_scan(scan: Scan, shared: PostgresCatalog, bucket: str) -> Scan:
    """``scan`` (the daemon's own catalog) without the objects a delete through another
    daemon hides (one query of the fleet's tombstones per chunk of objects, the chunks
    growing as ``shared_scan``'s pages)."""

    async def filtered(after: str) -> AsyncIterator[CatalogEntry]:
        sizes = _page_sizes()
        size = next(sizes)
        chunk: list[CatalogEntry] = []
        async for entry in scan(after):
            chunk.append(entry)
            if len(chunk) >= size:
                for kept in await _unhidden(chunk, shared, bucket):
                    yield kept
                chunk = []
                size = next(sizes)
        for kept in await _unhidden(chunk, shared, bucket):
            yield kept

    return filtered


async def _unhidden(
    entries: list[CatalogEntry], shared: PostgresCatalog, bucket: str
) -> list[CatalogEntry]:
    if not entries:
        return []
    deletes = await shared.tombstones(bucket, [entry.record.key for entry in entries])
    return _not_deleted(entries, deletes)


def _not_deleted(entries: list[CatalogEntry], deletes: dict[str, float]) -> list[CatalogEntry]:
    """``entries`` but those a delete in ``deletes`` (stamps by key) hides."""
    return [
        entry
        for entry in entries
        if entry.record.key not in deletes
        or stamp_ms(deletes[entry.record.key]) < stamp_ms(entry.record.mtime)
    ]


async def _nothing_batched(
    catalog: Catalog, shared: PostgresCatalog | None, bucket: str, prefix: str
) -> bool:
    """Whether no daemon batched a key under ``prefix`` (the bucket's listing is the answer)."""
    if next(catalog.iter_keys(bucket, prefix, ""), None) is not None:
        return False
    return shared is None or not await shared.page(bucket, prefix, "", 1)


async def _with_shared(
    catalog: Catalog,
    shared: PostgresCatalog,
    bucket: str,
    query: ListQuery,
    hidden: str,
) -> _Page:
    """The listing items of the batched keys of every daemon: this daemon's own (``mine``,
    read again without what other daemons deleted) merged with the fleet's catalog, the
    later object of a key winning by (stamp to the millisecond, batch id), as ``newest``
    decides for a read (the own one when both are the same write)."""
    own_writes: dict[str, tuple[int, str]] = {}
    fleet_writes: dict[str, tuple[int, str]] = {}
    own = unhidden_scan(local_scan(catalog, bucket, query.prefix), shared, bucket)
    mine = await catalog_page(_noting(own, own_writes), query, hidden=hidden)
    fleet_scan = shared_scan(shared, catalog, bucket, query.prefix)
    fleet = await catalog_page(_noting(fleet_scan, fleet_writes), query, hidden=hidden)
    merged: dict[str, ListItem] = {item.name: item for item in fleet.items}
    for item in mine.items:
        other = merged.get(item.name)
        own_wins = other is None or item.prefix or other.prefix
        if own_wins or own_writes[item.name] >= fleet_writes[item.name]:
            merged[item.name] = item
    names = sorted(merged, key=lambda name: name.encode("utf-8", "surrogatepass"))
    bounds = [side.items[-1].name for side in (mine, fleet) if side.truncated and side.items]
    if bounds:
        bound = min(bounds, key=lambda name: name.encode("utf-8", "surrogatepass"))
        names = [
            name
            for name in names
            if name.encode("utf-8", "surrogatepass") <= bound.encode("utf-8", "surrogatepass")
        ]
    truncated = mine.truncated or fleet.truncated or len(names) > query.max_keys
    return _Page([merged[name] for name in names[: query.max_keys + 1]], truncated)


def _noting(scan: Scan, writes: dict[str, tuple[int, str]]) -> Scan:
    """``scan``, noting the (stamp to the millisecond, batch id) of each object in ``writes``."""

    async def noted(after: str) -> AsyncIterator[CatalogEntry]:
        async for entry in scan(after):
            writes[entry.record.key] = (stamp_ms(entry.record.mtime), entry.batch_id)
            yield entry

    return noted


async def catalog_page(scan: Scan, query: ListQuery, *, hidden: str = "") -> _Page:
    """Up to ``max_keys + 1`` listing items of the batched keys, rolled up by the delimiter,
    none under ``hidden``. The keys under a common prefix (or ``hidden``) are skipped with a
    new range scan, not read one by one: a top-level listing of a million keys under
    ``logs/`` is one item, not a million rows read on the event loop."""
    items: list[ListItem] = []
    after = query.after
    rolled = query.delimiter and after.startswith(query.prefix)
    if rolled and common_prefix(after, query.prefix, query.delimiter) == after:
        after += _AFTER_ALL  # continuing after a rolled-up prefix: none of its keys again
    while True:
        resume = None
        async for entry in scan(after):
            key = entry.record.key
            if hidden and key.startswith(hidden):
                resume = max(hidden + _AFTER_ALL, key)  # on after the hidden keys
                break
            common = common_prefix(key, query.prefix, query.delimiter)
            if common is not None:
                if common == query.after or (items and items[-1].name == common):
                    continue
                items.append(ListItem(common, prefix=True))
                resume = common + _AFTER_ALL
            else:
                items.append(ListItem.of_record(entry.record))
            if len(items) > query.max_keys:
                return _Page(items[: query.max_keys + 1], truncated=True)
            if resume is not None:
                break  # skip the prefix's other keys with one new range scan, not one by one
        if resume is None:
            return _Page(items, truncated=False)
        after = resume


async def _upstream_page(call: Call, query: ListQuery, hidden: str) -> _Page | Response:
    """Up to ``max_keys + 1`` listing items of the bucket after ``query.after``, none under
    ``hidden``: a page that ends among those is continued after them (one request more)."""
    page = await _fetch(call, query, query.after)
    if isinstance(page, Response) or not hidden:
        return page
    items = [item for item in page.items if not item.name.startswith(hidden)]
    ended_hidden = page.truncated and page.items and page.items[-1].name.startswith(hidden)
    if not ended_hidden or len(items) > query.max_keys:
        return _Page(items, page.truncated)
    rest = await _fetch(call, query, max(page.items[-1].name, hidden + _AFTER_ALL))
    if isinstance(rest, Response):
        return rest
    items += [item for item in rest.items if not item.name.startswith(hidden)]
    return _Page(items, rest.truncated)


async def _fetch(call: Call, query: ListQuery, after: str) -> _Page | Response:
    """One ListObjectsV2 page of the bucket after ``after``."""
    parameters = [
        ("list-type", "2"),
        ("encoding-type", "url"),
        ("max-keys", str(query.max_keys + 1)),
        ("prefix", query.prefix),
    ]
    if query.delimiter:
        parameters.append(("delimiter", query.delimiter))
    if query.fetch_owner:
        parameters.append(("fetch-owner", "true"))
    if after:
        parameters.append(("start-after", after))
    upstream = await call.forwarder.send("GET", call.target.bucket, "", parameters, {})
    body = await read_all(upstream)
    if upstream.status_code != 200:
        headers = {k: v for k, v in upstream.headers.items() if k.lower() == "content-type"}
        return Response(body, status_code=upstream.status_code, headers=headers)
    return _parse(body, query)


def _owner(node: ElementTree.Element, ns: str) -> tuple[str, str] | None:
    owner = node.find(f"{ns}Owner")
    if owner is None:
        return None
    return owner.findtext(f"{ns}ID") or "", owner.findtext(f"{ns}DisplayName") or ""


def _parse(body: bytes, query: ListQuery) -> _Page:
    root = parse(body, "The bucket's listing could not be parsed.")
    ns = root.tag.partition("}")[0] + "}" if root.tag.startswith("{") else ""
    encoded = (root.findtext(f"{ns}EncodingType") or "").lower() == "url"

    def name(text: str | None) -> str:
        return unquote_plus(text or "") if encoded else text or ""

    items: list[ListItem] = []
    for node in root:
        tag = node.tag[len(ns) :]
        if tag == "Contents":
            items.append(
                ListItem(
                    name(node.findtext(f"{ns}Key")),
                    last_modified=node.findtext(f"{ns}LastModified") or "",
                    etag=node.findtext(f"{ns}ETag") or "",
                    size=int(node.findtext(f"{ns}Size") or 0),
                    storage_class=node.findtext(f"{ns}StorageClass") or "STANDARD",
                    owner=_owner(node, ns),
                )
            )
        elif tag == "CommonPrefixes":
            prefix = name(node.findtext(f"{ns}Prefix"))
            if prefix != query.after:
                items.append(ListItem(prefix, prefix=True))
    items.sort(key=lambda item: item.name)
    truncated = (root.findtext(f"{ns}IsTruncated") or "").lower() == "true"
    if len(items) > query.max_keys:
        items, truncated = items[: query.max_keys + 1], True
    return _Page(items, truncated)
