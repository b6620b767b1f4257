"""Reading what s3batchd wrote to the bucket, the way a consumer would."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: The one schema of the index, versions 1 and 2 (a compacted batch, with ``replaces``).
INDEX_SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "index.schema.json"


@dataclass(frozen=True)
class Location:
    """The x-s3batchd-* headers of one PUT response."""

    bucket: str
    tar_key: str
    offset: int
    length: int
    range: str | None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Location:
        """Parse the response headers (lower-case names, as botocore gives them)."""
        bucket, _, key = headers["x-s3batchd-tar"].removeprefix("s3://").partition("/")
        return cls(
            bucket=bucket,
            tar_key=key,
            offset=int(headers["x-s3batchd-offset"]),
            length=int(headers["x-s3batchd-length"]),
            range=headers.get("x-s3batchd-range"),
        )


def fetch(s3: S3Client, location: Location) -> bytes:
    """One ranged GET of the tar, exactly as the response told the client to do it."""
    if location.range is None:
        assert location.length == 0
        return b""
    answer = s3.get_object(Bucket=location.bucket, Key=location.tar_key, Range=location.range)
    return answer["Body"].read()


def keys(s3: S3Client, bucket: str) -> list[str]:
    """Every key in the bucket."""
    found: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        found.extend(item["Key"] for item in page.get("Contents", []))
    return found


@cache
def index_validator() -> Draft202012Validator:
    """A validator for docs/index.schema.json, every version (formats such as date-time
    checked too)."""
    schema = json.loads(INDEX_SCHEMA.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def indexes(s3: S3Client, bucket: str) -> list[dict[str, Any]]:
    """Every index document in the bucket, each validated against docs/index.schema.json.
    An index deleted between the listing and its GET (a compaction pass running meanwhile
    removes replaced batches) is no longer in the bucket: skipped."""
    documents = []
    for key in keys(s3, bucket):
        if key.endswith(".index.json"):
            try:
                body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except s3.exceptions.NoSuchKey:
                continue
            document = json.loads(body)
            index_validator().validate(document)
            documents.append(document)
    return documents


def indexed_objects(s3: S3Client, bucket: str) -> int:
    """Objects listed across all indexes of the bucket."""
    return sum(len(document["objects"]) for document in indexes(s3, bucket))
