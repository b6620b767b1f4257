"""Object sub-resources of a batched key: its tags (Get/Put/DeleteObjectTagging), its canned
ACL (Get/PutObjectAcl) and GetObjectAttributes, answered from the catalog (the bucket does not
hold the key). A change is an attribute update appended to the bucket's batch, as a delete's
tombstone is: durable in the spool before the answer, in the catalog at once and in the
batch's index. Keys that are not batched, and requests naming a version, are forwarded.

What a batched object cannot have is refused with ``501 NotImplemented`` naming it: a canned
ACL other than ``private`` or ``bucket-owner-full-control`` (its bytes are inside a private
batch tar, so no ACL can make them readable to anyone else), grants to anyone else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from botocore.exceptions import BotoCoreError, ClientError
from starlette.responses import Response

from s3batchd.concurrency import run_in
from s3batchd.errors import (
    InvalidArgument,
    InvalidRequest,
    InvalidTag,
    MalformedXML,
    NotImplementedS3,
    ServiceUnavailable,
)
from s3batchd.forward.passthrough import Call, forward, read_small_body
from s3batchd.handlers.get import http_date
from s3batchd.s3.api import ACCEPTED_VALUES, UNSUPPORTED_HEADERS
from s3batchd.s3.xml import local_name

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from s3batchd.batching.pipeline import Pipeline
    from s3batchd.catalog.store import CatalogEntry

_S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
_XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'
#: S3's limits on an object's tag set.
MAX_TAGS = 10
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
#: Every canned ACL S3 knows (for telling "not for a batched object" from "no such ACL").
CANNED_ACLS = frozenset(
    {
        "private",
        "public-read",
        "public-read-write",
        "authenticated-read",
        "aws-exec-read",
        "bucket-owner-read",
        "bucket-owner-full-control",
        "log-delivery-write",
    }
)
#: The canned ACLs a batched object can have: those the bucket's owner and the daemon (the
#: owner of the batch tar) enjoy anyway.
BATCHED_ACLS = ACCEPTED_VALUES["x-amz-acl"]
_GRANT_HEADERS = tuple(name for name in UNSUPPORTED_HEADERS if name.startswith("x-amz-grant-"))
#: GetObjectAttributes' attribute names.
OBJECT_ATTRIBUTES = ("ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize")
_CHECKSUM_ELEMENTS = {
    "crc32": "ChecksumCRC32",
    "crc32c": "ChecksumCRC32C",
    "crc64nvme": "ChecksumCRC64NVME",
    "sha1": "ChecksumSHA1",
    "sha256": "ChecksumSHA256",
}


async def object_subresource(call: Call) -> Response:
    """Get/Put/DeleteObjectTagging, Get/PutObjectAcl, GetObjectAttributes."""
    if "versionId" in call.target.query:
        return await forward(call)  # a batched object has no version id of its own
    entry = call.pipeline.catalog.get(call.target.bucket, call.target.key)
    if entry is None:
        return await forward(call)
    return await _SERVED[call.operation](call, entry)


# Tags


def tags_of(tagging: str | None) -> list[tuple[str, str]]:
    """The tags an ``x-amz-tagging`` value (URL query encoding) holds, in order."""
    return parse_qsl(tagging or "", keep_blank_values=True)


def tagging_header(tags: list[tuple[str, str]]) -> str:
    """``tags`` as an ``x-amz-tagging`` value."""
    return "&".join(f"{quote(key, safe='')}={quote(value, safe='')}" for key, value in tags)


def parse_tagging(body: bytes) -> list[tuple[str, str]]:
    """The tag set of a PutObjectTagging document, checked as S3 checks it (MalformedXML,
    InvalidTag)."""
    root = _parse(body)
    tag_sets = [node for node in root if local_name(node.tag) == "TagSet"]
    if local_name(root.tag) != "Tagging" or len(tag_sets) != 1:
        raise MalformedXML()
    tags = []
    for node in tag_sets[0]:
        if local_name(node.tag) != "Tag":
            raise MalformedXML()
        fields = {local_name(child.tag): child.text or "" for child in node}
        if "Key" not in fields or "Value" not in fields:
            raise MalformedXML()
        tags.append((fields["Key"], fields["Value"]))
    check_tags(tags)
    return tags


def check_tags(tags: list[tuple[str, str]]) -> None:
    """InvalidTag unless ``tags`` is a tag set S3 takes."""
    if len(tags) > MAX_TAGS:
        raise InvalidTag(f"Object tags cannot be greater than {MAX_TAGS}.")
    seen: set[str] = set()
    for key, value in tags:
        if not key or len(key) > MAX_TAG_KEY:
            raise InvalidTag(f"The TagKey you have provided is invalid: {key[:MAX_TAG_KEY]!r}.")
        if len(value) > MAX_TAG_VALUE:
            raise InvalidTag(f"The TagValue you have provided is too long (key {key!r}).")
        bad = [c for c in key + value if not _tag_character(c)]
        if bad:
            raise InvalidTag(f"The tag {key!r} has a character tags cannot have: {bad[0]!r}.")
        if key in seen:
            raise InvalidTag(f"Cannot provide multiple Tags with the same key: {key!r}.")
        seen.add(key)


#: Tags may hold letters, digits and white space of any script, and these.
_TAG_SYMBOLS = frozenset("_.:/=+-@")


def _tag_character(character: str) -> bool:
    return character.isalnum() or character.isspace() or character in _TAG_SYMBOLS


async def get_tagging(call: Call, entry: CatalogEntry) -> Response:
    """GetObjectTagging of a batched object."""
    tags = "".join(
        f"<Tag><Key>{escape(key)}</Key><Value>{escape(value)}</Value></Tag>"
        for key, value in tags_of(entry.record.headers.get("x-amz-tagging"))
    )
    return _xml(f'<Tagging xmlns="{_S3_NS}"><TagSet>{tags}</TagSet></Tagging>')


async def put_tagging(call: Call, entry: CatalogEntry) -> Response:
    """PutObjectTagging of a batched object: the whole tag set is replaced."""
    tags = parse_tagging(await read_small_body(call))
    headers = dict(entry.record.headers)
    headers.pop("x-amz-tagging", None)
    if tags:
        headers["x-amz-tagging"] = tagging_header(tags)
    await _update(call.pipeline, entry, headers)
    return Response(status_code=200)


async def delete_tagging(call: Call, entry: CatalogEntry) -> Response:
    """DeleteObjectTagging of a batched object."""
    if "x-amz-tagging" in entry.record.headers:
        headers = {k: v for k, v in entry.record.headers.items() if k != "x-amz-tagging"}
        await _update(call.pipeline, entry, headers)
    return Response(status_code=204)


# ACL


async def get_acl(call: Call, entry: CatalogEntry) -> Response:
    """GetObjectAcl of a batched object: its owner is the daemon's upstream identity (the
    daemon uploads its batch), its grants those of its canned ACL."""
    owner_id, owner_name = await object_owner(call, entry)
    grants = [(owner_id, owner_name)]
    if entry.record.headers.get("x-amz-acl") == "bucket-owner-full-control":
        bucket_owner = await bucket_owner_of(call)
        if bucket_owner[0] != owner_id:
            grants.append(bucket_owner)
    listed = "".join(
        f'<Grant><Grantee xmlns:xsi="{_XSI_NS}" xsi:type="CanonicalUser">{_user(*grantee)}'
        "</Grantee><Permission>FULL_CONTROL</Permission></Grant>"
        for grantee in grants
    )
    return _xml(
        f'<AccessControlPolicy xmlns="{_S3_NS}"><Owner>{_user(owner_id, owner_name)}</Owner>'
        f"<AccessControlList>{listed}</AccessControlList></AccessControlPolicy>"
    )


async def put_acl(call: Call, entry: CatalogEntry) -> Response:
    """PutObjectAcl of a batched object: a canned ACL a batched object can have, or an
    AccessControlPolicy that grants nothing beyond the owner's FULL_CONTROL (= private)."""
    granted = [name for name in _GRANT_HEADERS if name in call.headers]
    if granted:
        raise NotImplementedS3(f"The {granted[0]} header is not supported for batched objects.")
    body = await read_small_body(call) if call.has_body() else b""
    if "x-amz-acl" in call.headers:
        if body:
            raise InvalidRequest("Specify either a canned ACL (x-amz-acl) or an ACL document.")
        canned = canned_acl(call.headers["x-amz-acl"])
    elif body:
        canned = await _policy_acl(call, entry, body)
    else:
        raise InvalidRequest("PutObjectAcl needs an x-amz-acl header or an ACL document.")
    headers = dict(entry.record.headers)
    headers["x-amz-acl"] = canned
    if headers != entry.record.headers:
        await _update(call.pipeline, entry, headers)
    return Response(status_code=200)


def canned_acl(value: str) -> str:
    """A canned ACL a batched object can have (InvalidArgument when S3 has no such ACL,
    NotImplemented when a batched object cannot honour it)."""
    canned = value.strip().lower()
    if canned not in CANNED_ACLS:
        raise InvalidArgument(f"x-amz-acl: {value} is not a canned ACL.")
    if canned not in BATCHED_ACLS:
        raise NotImplementedS3(
            f"x-amz-acl: {canned} is not supported for batched objects (their bytes are "
            "inside a private batch tar)."
        )
    return canned


async def _policy_acl(call: Call, entry: CatalogEntry, body: bytes) -> str:
    """The canned ACL an AccessControlPolicy document amounts to: ``private`` when every
    grant is FULL_CONTROL to the owner; anything else is NotImplemented, naming the grant."""
    root = _parse(body)
    if local_name(root.tag) != "AccessControlPolicy":
        raise MalformedXML()
    owner_id, _ = await object_owner(call, entry)
    for node in root.iter():
        if local_name(node.tag) != "Grant":
            continue
        fields = {local_name(child.tag): child for child in node}
        grantee = fields.get("Grantee")
        permission = fields.get("Permission")
        if grantee is None or permission is None:
            raise MalformedXML()
        who = {local_name(child.tag): (child.text or "").strip() for child in grantee}
        if who.get("ID") != owner_id or (permission.text or "").strip() != "FULL_CONTROL":
            named = who.get("ID") or who.get("URI") or who.get("EmailAddress") or "?"
            raise NotImplementedS3(
                f"An ACL granting {(permission.text or '').strip()} to {named} is not supported "
                "for batched objects (their bytes are inside a private batch tar)."
            )
    return "private"


async def object_owner(call: Call, entry: CatalogEntry) -> tuple[str, str]:
    """The canonical id and display name of a batched object's owner, as the bucket answers
    for the objects the daemon writes: the owner of its batch tar once that is uploaded
    (asked once per bucket), before that the bucket's owner (the owner of every object of a
    bucket that enforces bucket ownership, S3's default)."""
    state = call.request.app.state
    bucket = call.target.bucket
    owners: dict[str, tuple[str, str]] = getattr(state, "tar_owners", {})
    if bucket in owners:
        return owners[bucket]
    if not entry.uploaded:
        return await bucket_owner_of(call)
    pipeline = call.pipeline
    answer = await _ask(
        pipeline, lambda: pipeline.client.get_object_acl(Bucket=bucket, Key=entry.tar_key)
    )
    owners[bucket] = _owner_of(answer)
    state.tar_owners = owners
    return owners[bucket]


async def bucket_owner_of(call: Call) -> tuple[str, str]:
    """The canonical id and display name of the bucket's owner, asked once per bucket."""
    state = call.request.app.state
    bucket = call.target.bucket
    owners: dict[str, tuple[str, str]] = getattr(state, "bucket_owners", {})
    if bucket not in owners:
        pipeline = call.pipeline
        answer = await _ask(pipeline, lambda: pipeline.client.get_bucket_acl(Bucket=bucket))
        owners[bucket] = _owner_of(answer)
        state.bucket_owners = owners
    return owners[bucket]


async def _ask(pipeline: Pipeline, request: Callable[[], object]) -> object:
    try:
        return await run_in(pipeline.read_executor, request)
    except (BotoCoreError, ClientError) as exc:
        raise ServiceUnavailable(f"The bucket's owner could not be asked: {exc}") from exc


def _owner_of(answer: object) -> tuple[str, str]:
    owner = answer.get("Owner", {}) if isinstance(answer, dict) else {}
    owner_id = str(owner.get("ID", ""))
    return owner_id, str(owner.get("DisplayName", owner_id))


def _user(owner_id: str, name: str) -> str:
    return f"<ID>{escape(owner_id)}</ID><DisplayName>{escape(name)}</DisplayName>"


# Attributes


async def get_attributes(call: Call, entry: CatalogEntry) -> Response:
    """GetObjectAttributes of a batched object, from the catalog."""
    asked = [a.strip() for a in call.headers.get("x-amz-object-attributes", "").split(",")]
    asked = [a for a in asked if a]
    if not asked:
        raise InvalidRequest(
            "The x-amz-object-attributes header specifying the attributes to "
            "be retrieved is either missing or empty."
        )
    unknown = [a for a in asked if a not in OBJECT_ATTRIBUTES]
    if unknown:
        raise InvalidArgument(f"Invalid attribute name specified: {unknown[0]}.")
    record = entry.record
    parts = []
    if "ETag" in asked:
        parts.append(f"<ETag>{record.multipart_etag or record.md5_hex}</ETag>")
    if "Checksum" in asked and record.checksums:
        sums = "".join(
            f"<{_CHECKSUM_ELEMENTS[a]}>{v}</{_CHECKSUM_ELEMENTS[a]}>"
            for a, v in record.checksums.items()
            if a in _CHECKSUM_ELEMENTS
        )
        parts.append(f"<Checksum>{sums}<ChecksumType>FULL_OBJECT</ChecksumType></Checksum>")
    if "ObjectParts" in asked and record.multipart_etag:
        count = record.multipart_etag.rsplit("-", 1)[-1]
        parts.append(f"<ObjectParts><PartsCount>{count}</PartsCount></ObjectParts>")
    if "StorageClass" in asked:
        storage_class = record.headers.get("x-amz-storage-class", "STANDARD")
        parts.append(f"<StorageClass>{escape(storage_class)}</StorageClass>")
    if "ObjectSize" in asked:
        parts.append(f"<ObjectSize>{record.size}</ObjectSize>")
    return _xml(
        f'<GetObjectAttributesResponse xmlns="{_S3_NS}">{"".join(parts)}'
        "</GetObjectAttributesResponse>",
        {"Last-Modified": http_date(record.mtime)},
    )


# Shared


async def _update(pipeline: Pipeline, entry: CatalogEntry, headers: dict[str, str]) -> None:
    await pipeline.update(entry.bucket, entry.record, headers)


def _parse(body: bytes) -> ElementTree.Element:
    try:
        return ElementTree.fromstring(body)  # noqa: S314  no entities are expanded by expat here
    except ElementTree.ParseError as exc:
        raise MalformedXML() from exc


def _xml(document: str, headers: dict[str, str] | None = None) -> Response:
    return Response((_XML_HEAD + document).encode(), media_type="application/xml", headers=headers)


_SERVED: dict[str, Callable[[Call, CatalogEntry], Awaitable[Response]]] = {
    "GetObjectTagging": get_tagging,
    "PutObjectTagging": put_tagging,
    "DeleteObjectTagging": delete_tagging,
    "GetObjectAcl": get_acl,
    "PutObjectAcl": put_acl,
    "GetObjectAttributes": get_attributes,
}
#: The operations this module serves (dispatch.HANDLERS).
OPERATIONS = tuple(_SERVED)
