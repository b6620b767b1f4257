"""A daemon that does not follow the bucket (``catalog.follow = false``, SQLite catalog) reads
the keys a compaction pass moved, after the batches its catalog names were deleted: the read
that finds a tar gone looks up the compacted index that replaces its batch once, records it,
and answers from the new place (upload/relocate.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import ClientError

from tests.batches import indexes
from tests.conftest import wait_for
from tests.test_compaction import _env, _invoke, _write_and_delete

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from tests.conftest import DaemonFactory


@pytest.mark.parametrize("follow", [False, True], ids=["not-following", "following-restarted"])
def test_a_daemon_reads_every_moved_key_after_the_batches_its_catalog_names_went(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str, follow: bool
) -> None:
    # Not following: the catalog learns only from the search. Following, but restarted on its
    # catalog after the pass: no round of the bucket runs before its first read.
    daemon = start_daemon(catalog={"follow": follow})
    assert (daemon.pipeline.follower is not None) == follow
    written = _write_and_delete(daemon, s3, bucket)
    live = sorted(set(written.bodies) - written.deleted)
    s3.put_object(Bucket=bucket, Key="direct", Body=b"not batched")  # never in its catalog
    if follow:
        daemon.stop()

    # A pass of the command, in a process of its own, with no grace period: the batches the
    # daemon's catalog names are gone when it returns.
    env = {
        **os.environ,
        **_env(daemon, erase_within_s="0", grace_s="0", payback_days="10000000"),
    }
    command = [sys.executable, "-m", "s3batchd", "compact", "--bucket", bucket]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"deleted (did): {len(written.old_batches)} replaced batches" in done.stdout
    compacted = [d for d in indexes(s3, bucket) if d["version"] == 2]
    assert len(compacted) == 1
    assert sorted(compacted[0]["replaces"]) == sorted(written.old_batches)
    for old_tar in written.old_batches.values():
        with pytest.raises(ClientError):
            s3.head_object(Bucket=bucket, Key=old_tar)

    if follow:
        daemon = start_daemon(catalog={"follow": follow})  # the same spool and catalog
    client = daemon.client()

    def read_all() -> None:
        for key in live:
            got = client.get_object(Bucket=bucket, Key=key)
            assert got["Body"].read() == written.bodies[key], key
            assert got["ETag"] == written.etags[key]
            assert got["Metadata"] == {"n": str(int(key[2:]))}
            assert got["ContentType"] == "text/x-test"
            assert got["ResponseMetadata"]["HTTPHeaders"]["x-s3batchd-tar"] == (
                f"s3://{bucket}/{compacted[0]['tar']['key']}"
            )
        for key in written.deleted:
            with pytest.raises(ClientError) as caught:
                client.get_object(Bucket=bucket, Key=key)
            assert caught.value.response["Error"]["Code"] == "NoSuchKey"
        direct = client.get_object(Bucket=bucket, Key="direct")  # forwarded, as always
        assert direct["Body"].read() == b"not batched"

    read_all()
    # One search per missing batch, whatever the number of reads; none once the catalog
    # learned the new places.
    searches = daemon.pipeline.relocator.searches
    assert searches <= len(written.old_batches)
    assert searches >= (not follow)
    read_all()
    assert daemon.pipeline.relocator.searches == searches


def test_a_key_compacted_twice_is_found_when_no_index_names_its_batch_any_more(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(catalog={"follow": False})
    client = daemon.client()
    written = _write_and_delete(daemon, s3, bucket)
    env = _env(daemon, erase_within_s="0", grace_s="3600", payback_days="10000000")
    _invoke(env, "compact", "--bucket", bucket)  # the first compacted batch; old ones kept
    # Half of the keys left deleted through the daemon, then: the old batches deleted (one
    # pass), the first compacted batch rewritten and deleted at once (the next).
    live = sorted(set(written.bodies) - written.deleted)
    gone = set(live[::2])
    for key in gone:
        client.delete_object(Bucket=bucket, Key=key)
    tombstones = len(written.deleted) + len(gone)
    wait_for(lambda: sum(len(d.get("tombstones", [])) for d in indexes(s3, bucket)) >= tombstones)
    _invoke({**env, "S3BATCHD_COMPACTION__GRACE_S": "0"}, "compact", "--bucket", bucket)
    _invoke({**env, "S3BATCHD_COMPACTION__GRACE_S": "0"}, "compact", "--bucket", bucket)
    documents = indexes(s3, bucket)
    replaced = {batch for d in documents for batch in d.get("replaces", [])}
    assert not replaced & set(written.old_batches)  # no index names them any more
    assert not {d["batch_id"] for d in documents} & set(written.old_batches)

    for key in sorted(set(live) - gone):
        got = client.get_object(Bucket=bucket, Key=key)
        assert got["Body"].read() == written.bodies[key], key
        assert got["ETag"] == written.etags[key]
    for key in gone | written.deleted:
        with pytest.raises(ClientError) as caught:
            client.get_object(Bucket=bucket, Key=key)
        assert caught.value.response["Error"]["Code"] == "NoSuchKey"


def test_a_copy_whose_batched_source_was_moved_copies_it_from_its_new_place(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(catalog={"follow": False})
    written = _write_and_delete(daemon, s3, bucket)
    live = sorted(set(written.bodies) - written.deleted)
    env = _env(daemon, erase_within_s="0", grace_s="0", payback_days="10000000")
    _invoke(env, "compact", "--bucket", bucket)  # the batches the catalog names are gone
    client = daemon.client()

    source = live[0]
    client.copy_object(Bucket=bucket, Key="copied", CopySource={"Bucket": bucket, "Key": source})
    got = client.get_object(Bucket=bucket, Key="copied")
    assert got["Body"].read() == written.bodies[source]
    assert got["ETag"] == written.etags[source]

    other = live[1]
    upload = client.create_multipart_upload(Bucket=bucket, Key="assembled")["UploadId"]
    part = client.upload_part_copy(
        Bucket=bucket,
        Key="assembled",
        UploadId=upload,
        PartNumber=1,
        CopySource={"Bucket": bucket, "Key": other},
    )
    client.complete_multipart_upload(
        Bucket=bucket,
        Key="assembled",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["CopyPartResult"]["ETag"]}]},
    )
    assert (
        client.get_object(Bucket=bucket, Key="assembled")["Body"].read() == (written.bodies[other])
    )

    deleted = sorted(written.deleted)[0]
    with pytest.raises(ClientError) as caught:
        client.copy_object(
            Bucket=bucket, Key="nothing", CopySource={"Bucket": bucket, "Key": deleted}
        )
    assert caught.value.response["Error"]["Code"] == "NoSuchKey"
