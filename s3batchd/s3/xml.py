"""Reading S3's XML documents (the client's and the bucket's)."""

from __future__ import annotations

from xml.etree import ElementTree

from s3batchd.errors import MalformedXML


def local_name(tag: str) -> str:
    """An element's name without its namespace (``{http://s3...}Key`` -> ``Key``): clients
    and servers differ in whether they send S3's namespace."""
    return tag.rsplit("}", 1)[-1]


def parse(document: bytes, message: str | None = None) -> ElementTree.Element:
    """The root of an XML document; ``400 MalformedXML`` (with ``message``, else S3's) when
    it is not well-formed. Expat expands no entities, so a client's document is safe."""
    try:
        return ElementTree.fromstring(document)  # noqa: S314  no entities are expanded
    except ElementTree.ParseError as exc:
        raise MalformedXML(message) from exc


def parse_or_none(document: bytes) -> ElementTree.Element | None:
    """The root of an XML document, or None when it is not well-formed (a bucket's answer
    the caller can do without)."""
    try:
        return ElementTree.fromstring(document)  # noqa: S314  no entities are expanded
    except ElementTree.ParseError:
        return None
