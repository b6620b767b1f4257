"""Per-bucket decisions: versioned and object-lock buckets, requested and default
server-side encryption, SSE-C headers (docs/passthrough.md#per-bucket-decisions)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Daemon


def test_sse_c_key_without_its_algorithm_is_refused(daemon: Daemon, bucket: str) -> None:
    client = daemon.client()
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=bucket, Key="c", Body=b"x", SSECustomerKey="k" * 32)
    assert refused.value.response["Error"]["Code"] == "InvalidArgument"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert daemon.pipeline.catalog.count() == 0
