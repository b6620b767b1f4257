"""Conditions of a DeleteObjects request on batched keys.

A Delete document may give an object an ``ETag``: S3 deletes it only while its current ETag
matches, else lists it under ``Error`` with ``PreconditionFailed``. A batched key's current
object is the daemon's (the bucket holds it only inside a tar), so the bucket cannot judge the
condition: the daemon does. A condition that holds is dropped from the document sent on (the
bucket then deletes any older object of the key and reports it deleted); an object whose
condition fails is taken out of the document and listed as an error in the answer.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from s3batchd.catalog.store import Catalog
from s3batchd.errors import MalformedXML, PreconditionFailed
from s3batchd.handlers.get import etag_matches
from s3batchd.s3.xml import local_name

_FAILED = "At least one of the pre-conditions you specified did not hold"


@dataclass(slots=True)
class DeleteDecision:
    """What is left for the bucket and what the daemon refused."""

    body: bytes
    """The Delete document to send on (unchanged when no condition was decided here)."""
    refused: list[str] = field(default_factory=list)
    """Keys whose ETag condition failed against the batched object."""
    remaining: int = 0
    """Objects left in ``body``."""
    changed: bool = False
    """True when ``body`` differs from the client's (its digests no longer hold)."""


def decide_conditions(catalog: Catalog, bucket: str, body: bytes) -> DeleteDecision:
    """Judge the ETag conditions of the document's unversioned objects whose key is batched."""
    try:
        root = ElementTree.fromstring(body)  # noqa: S314  no entities are expanded by expat here
    except ElementTree.ParseError as exc:
        raise MalformedXML() from exc
    decision = DeleteDecision(body)
    for node in list(root):
        if local_name(node.tag) != "Object":
            continue
        decision.remaining += 1
        fields = {local_name(child.tag): child for child in node}
        if "ETag" not in fields or "Key" not in fields or "VersionId" in fields:
            continue
        key = fields["Key"].text or ""
        entry = catalog.get(bucket, key)
        if entry is None:
            continue  # the bucket holds the key's current object: it decides
        decision.changed = True
        if etag_matches(fields["ETag"].text or "", entry.record.etag):
            node.remove(fields["ETag"])
        else:
            root.remove(node)
            decision.refused.append(key)
            decision.remaining -= 1
    if decision.changed:
        decision.body = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    return decision


def content_md5(body: bytes) -> str:
    """The Content-MD5 header of a rewritten document."""
    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()


def refused_errors(keys: list[str]) -> str:
    """DeleteResult ``Error`` elements for keys whose condition failed."""
    return "".join(
        f"<Error><Key>{escape(key)}</Key><Code>PreconditionFailed</Code>"
        f"<Message>{_FAILED}</Message></Error>"
        for key in keys
    )


def add_errors(answer: bytes, errors: str) -> bytes:
    """The bucket's DeleteResult with ``errors`` appended before its closing tag."""
    end = answer.rfind(b"</DeleteResult>")
    if end < 0:
        return answer
    return answer[:end] + errors.encode() + answer[end:]


def decided_delete(catalog: Catalog, bucket: str, key: str, headers: dict[str, str]) -> bool:
    """DeleteObject's ``If-Match`` on a batched key, against the batched ETag: 412 when it
    differs; True when it held (the request goes on without it), False when the bucket
    decides (no condition, or the key is not batched)."""
    if "if-match" not in headers:
        return False
    entry = catalog.get(bucket, key)
    if entry is None:
        return False
    if not etag_matches(headers["if-match"], entry.record.etag):
        raise PreconditionFailed()
    return True
