"""Reading S3's XML documents (the client's and the bucket's)."""

from __future__ import annotations


def local_name(tag: str) -> str:
    """An element's name without its namespace (``{http://s3...}Key`` -> ``Key``): clients
    and servers differ in whether they send S3's namespace."""
    return tag.rsplit("}", 1)[-1]
