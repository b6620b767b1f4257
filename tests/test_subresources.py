"""Tags, ACL and attributes of a batched key: the same requests through the daemon and straight
to SeaweedFS get the same answers, and what changes is in the next index (``updates``), so
``s3batchd reindex`` rebuilds it."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from s3batchd.catalog.store import catalog_path
from s3batchd.cli.main import main
from s3batchd.errors import InvalidTag, MalformedXML
from s3batchd.handlers.subresources import parse_tagging, tagging_header, tags_of
from tests.batches import indexes
from tests.conftest import Daemon, DaemonFactory, wait_for
from tests.daemon_process import DaemonProcess

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.literals import ObjectAttributesType, ObjectCannedACLType
    from mypy_boto3_s3.type_defs import TaggingTypeDef, TagTypeDef

    from s3batchd.cli.seaweed import LocalS3

ALL_ATTRIBUTES: list[ObjectAttributesType] = [
    "ETag",
    "Checksum",
    "ObjectParts",
    "StorageClass",
    "ObjectSize",
]


def _batched(answer: Any) -> bool:
    return "x-s3batchd-tar" in answer["ResponseMetadata"]["HTTPHeaders"]


def _both(daemon: Daemon, s3: S3Client) -> tuple[S3Client, S3Client]:
    return daemon.client(), s3


def _error(call: Any) -> tuple[int, str]:
    with pytest.raises(ClientError) as caught:
        call()
    response = caught.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def _tags(client: S3Client, bucket: str, key: str) -> list[dict[str, str]]:
    tag_set = client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    return [{"Key": tag["Key"], "Value": tag["Value"]} for tag in tag_set]


def test_tagging_of_a_batched_key_answers_as_the_bucket_does(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    through, direct = _both(daemon, s3)
    put = through.put_object(Bucket=bucket, Key="t/batched", Body=b"tagged", Tagging="a=1&b=x%20y")
    assert _batched(put)
    direct.put_object(Bucket=bucket, Key="t/direct", Body=b"tagged", Tagging="a=1&b=x%20y")
    keys = {through: "t/batched", direct: "t/direct"}
    for client, key in keys.items():
        assert _tags(client, bucket, key) == [
            {"Key": "a", "Value": "1"},
            {"Key": "b", "Value": "x y"},
        ]
        assert client.head_object(Bucket=bucket, Key=key)["TagCount"] == 2
    new: TaggingTypeDef = {"TagSet": [{"Key": "team", "Value": "a=b+c @x"}]}
    for client, key in keys.items():
        answer = client.put_object_tagging(Bucket=bucket, Key=key, Tagging=new)
        assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert _tags(client, bucket, key) == [{"Key": "team", "Value": "a=b+c @x"}]
        assert client.head_object(Bucket=bucket, Key=key)["TagCount"] == 1
        assert client.get_object(Bucket=bucket, Key=key)["TagCount"] == 1
    for client, key in keys.items():
        answer = client.delete_object_tagging(Bucket=bucket, Key=key)
        assert answer["ResponseMetadata"]["HTTPStatusCode"] == 204
        assert _tags(client, bucket, key) == []
        assert "TagCount" not in client.head_object(Bucket=bucket, Key=key)
    # The object itself is untouched.
    assert through.get_object(Bucket=bucket, Key="t/batched")["Body"].read() == b"tagged"


def test_tag_sets_s3_refuses_are_refused_for_a_batched_key(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    through, direct = _both(daemon, s3)
    assert _batched(through.put_object(Bucket=bucket, Key="k", Body=b"x"))
    direct.put_object(Bucket=bucket, Key="d", Body=b"x")
    refused: list[list[TagTypeDef]] = [
        [{"Key": f"k{n}", "Value": "v"} for n in range(11)],
        [{"Key": "k" * 129, "Value": "v"}],
        [{"Key": "k", "Value": "v" * 257}],
        [{"Key": "k", "Value": "a&b"}],
    ]
    for tags in refused:
        for client, key in ((through, "k"), (direct, "d")):
            call = partial(
                client.put_object_tagging, Bucket=bucket, Key=key, Tagging={"TagSet": tags}
            )
            assert _error(call) == (400, "InvalidTag")
    assert _tags(through, bucket, "k") == []


def test_missing_keys_are_still_no_such_key(daemon: Daemon, bucket: str) -> None:
    client = daemon.client()
    calls = [
        lambda: client.get_object_tagging(Bucket=bucket, Key="nope"),
        lambda: client.put_object_tagging(Bucket=bucket, Key="nope", Tagging={"TagSet": []}),
        lambda: client.delete_object_tagging(Bucket=bucket, Key="nope"),
        lambda: client.get_object_acl(Bucket=bucket, Key="nope"),
        lambda: client.put_object_acl(Bucket=bucket, Key="nope", ACL="private"),
        lambda: client.get_object_attributes(Bucket=bucket, Key="nope", ObjectAttributes=["ETag"]),
    ]
    for call in calls:
        assert _error(call) == (404, "NoSuchKey")


def test_acl_of_a_batched_key_answers_as_the_bucket_does(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    through, direct = _both(daemon, s3)
    assert _batched(through.put_object(Bucket=bucket, Key="a/batched", Body=b"x"))
    direct.put_object(Bucket=bucket, Key="a/direct", Body=b"x")
    keys = {through: "a/batched", direct: "a/direct"}

    def acl(client: S3Client) -> dict[str, Any]:
        answer = dict(client.get_object_acl(Bucket=bucket, Key=keys[client]))
        answer.pop("ResponseMetadata")
        return answer

    assert acl(through) == acl(direct)
    accepted: tuple[ObjectCannedACLType, ...] = ("bucket-owner-full-control", "private")
    for canned in accepted:
        for client, key in keys.items():
            client.put_object_acl(Bucket=bucket, Key=key, ACL=canned)
        assert acl(through) == acl(direct), canned
    # An AccessControlPolicy that grants the owner alone FULL_CONTROL is private.
    policy = acl(direct)
    through.put_object_acl(Bucket=bucket, Key="a/batched", AccessControlPolicy=policy)  # type: ignore[arg-type]
    assert acl(through) == acl(direct)


def test_acls_a_batched_object_cannot_honour_are_refused_by_name(
    daemon: Daemon, bucket: str
) -> None:
    client = daemon.client()
    assert _batched(client.put_object(Bucket=bucket, Key="k", Body=b"x"))
    refused: tuple[ObjectCannedACLType, ...] = (
        "public-read",
        "public-read-write",
        "authenticated-read",
    )
    for canned in refused:
        call = partial(client.put_object_acl, Bucket=bucket, Key="k", ACL=canned)
        assert _error(call) == (501, "NotImplemented")
    owner = client.get_object_acl(Bucket=bucket, Key="k")["Owner"]
    public = {
        "Owner": owner,
        "Grants": [
            {
                "Grantee": {
                    "Type": "Group",
                    "URI": "http://acs.amazonaws.com/groups/global/AllUsers",
                },
                "Permission": "READ",
            }
        ],
    }
    with pytest.raises(ClientError) as caught:
        client.put_object_acl(Bucket=bucket, Key="k", AccessControlPolicy=public)  # type: ignore[arg-type]
    assert caught.value.response["Error"]["Code"] == "NotImplemented"
    assert "AllUsers" in caught.value.response["Error"]["Message"]
    grants = client.get_object_acl(Bucket=bucket, Key="k")["Grants"]
    assert [g["Permission"] for g in grants] == ["FULL_CONTROL"]


def test_get_object_attributes_of_a_batched_key(daemon: Daemon, s3: S3Client, bucket: str) -> None:
    through, direct = _both(daemon, s3)
    put = through.put_object(Bucket=bucket, Key="batched", Body=b"hello", ChecksumAlgorithm="CRC32")
    assert _batched(put)
    direct.put_object(Bucket=bucket, Key="direct", Body=b"hello")
    mine = through.get_object_attributes(
        Bucket=bucket,
        Key="batched",
        ObjectAttributes=ALL_ATTRIBUTES,
    )
    theirs = direct.get_object_attributes(
        Bucket=bucket,
        Key="direct",
        ObjectAttributes=ALL_ATTRIBUTES,
    )
    assert mine["ETag"] == theirs["ETag"]
    assert mine["StorageClass"] == theirs["StorageClass"]
    assert mine["ObjectSize"] == theirs["ObjectSize"]
    assert "ObjectParts" not in mine and "ObjectParts" not in theirs
    assert mine["Checksum"]["ChecksumCRC32"] == put["ChecksumCRC32"]
    assert mine["LastModified"] == through.head_object(Bucket=bucket, Key="batched")["LastModified"]
    only = through.get_object_attributes(
        Bucket=bucket, Key="batched", ObjectAttributes=["ObjectSize"]
    )
    assert only["ObjectSize"] == 5
    assert "ETag" not in only


def test_a_new_put_of_the_key_has_only_its_own_tags(daemon: Daemon, bucket: str) -> None:
    client = daemon.client()
    client.put_object(Bucket=bucket, Key="k", Body=b"one")
    client.put_object_tagging(
        Bucket=bucket, Key="k", Tagging={"TagSet": [{"Key": "a", "Value": "1"}]}
    )
    client.put_object(Bucket=bucket, Key="k", Body=b"two")
    assert _tags(client, bucket, "k") == []
    client.put_object(Bucket=bucket, Key="k", Body=b"three", Tagging="b=2")
    assert _tags(client, bucket, "k") == [{"Key": "b", "Value": "2"}]


def test_tags_and_acl_survive_upload_and_reindex(
    start_daemon: DaemonFactory, s3_server: LocalS3, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon()
    client = daemon.client()
    client.put_object(Bucket=bucket, Key="kept", Body=b"one", Tagging="old=1")
    client.put_object(Bucket=bucket, Key="other", Body=b"two")
    # The first batch goes up before the updates: they change a key of an earlier batch.
    wait_for(lambda: sum(len(d["objects"]) for d in indexes(s3, bucket)) == 2)
    tags: TaggingTypeDef = {"TagSet": [{"Key": "new", "Value": "2"}, {"Key": "x", "Value": "y"}]}
    client.put_object_tagging(Bucket=bucket, Key="kept", Tagging=tags)
    client.put_object_acl(Bucket=bucket, Key="kept", ACL="bucket-owner-full-control")
    client.put_object_tagging(Bucket=bucket, Key="other", Tagging=tags)
    client.delete_object_tagging(Bucket=bucket, Key="other")
    acl_before = client.get_object_acl(Bucket=bucket, Key="kept")
    daemon.stop()
    updates = [u for d in indexes(s3, bucket) for u in d.get("updates", [])]  # schema-checked
    assert [(u["key"], u["headers"]) for u in updates] == [
        ("kept", {"x-amz-tagging": "new=2&x=y"}),
        ("kept", {"x-amz-tagging": "new=2&x=y", "x-amz-acl": "bucket-owner-full-control"}),
        ("other", {"x-amz-tagging": "new=2&x=y"}),
        ("other", {}),
    ]
    spool = daemon.settings.spool.dir
    shutil.rmtree(catalog_path(spool).parent)  # a new host: an empty spool, no catalog
    env = {
        "S3BATCHD_SPOOL__DIR": str(spool),
        "S3BATCHD_UPSTREAM__ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    result = CliRunner().invoke(main, ["reindex", f"s3://{bucket}/s3batchd/"], env=env)
    assert result.exit_code == 0, result.output
    assert ", 2 objects in the catalog" in result.output  # the updates are not objects
    again = start_daemon().client()
    assert _tags(again, bucket, "kept") == tags["TagSet"]
    assert _tags(again, bucket, "other") == []
    assert again.head_object(Bucket=bucket, Key="kept")["TagCount"] == 2
    acl_after = again.get_object_acl(Bucket=bucket, Key="kept")
    assert acl_after["Grants"] == acl_before["Grants"]
    assert again.get_object(Bucket=bucket, Key="kept")["Body"].read() == b"one"


def test_parse_tagging() -> None:
    ns = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
    body = f"<Tagging {ns}><TagSet><Tag><Key>a b</Key><Value></Value></Tag></TagSet></Tagging>"
    assert parse_tagging(body.encode()) == [("a b", "")]
    assert tags_of(tagging_header([("a b", ""), ("c", "d&e=f")])) == [("a b", ""), ("c", "d&e=f")]
    for bad in (
        b"<Tagging>",
        b"<Other><TagSet/></Other>",
        b"<Tagging><TagSet><Tag><Key>k</Key></Tag></TagSet></Tagging>",
    ):
        with pytest.raises(MalformedXML):
            parse_tagging(bad)
    duplicate = (
        b"<Tagging><TagSet>"
        + b"<Tag><Key>k</Key><Value>v</Value></Tag>" * 2
        + b"</TagSet></Tagging>"
    )
    with pytest.raises(InvalidTag):
        parse_tagging(duplicate)


def test_the_canned_acl_is_recorded_and_not_copied(daemon: Daemon, bucket: str) -> None:
    client = daemon.client()
    client.put_object(Bucket=bucket, Key="src", Body=b"x", ACL="bucket-owner-full-control")
    client.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "src"})
    client.copy_object(
        Bucket=bucket, Key="acl", CopySource={"Bucket": bucket, "Key": "src"}, ACL="private"
    )

    def acl(key: str) -> str | None:
        entry = daemon.pipeline.catalog.get(bucket, key)
        assert entry is not None
        return entry.record.headers.get("x-amz-acl")

    assert (acl("src"), acl("copy"), acl("acl")) == ("bucket-owner-full-control", None, "private")
    head = client.head_object(Bucket=bucket, Key="src")["ResponseMetadata"]["HTTPHeaders"]
    assert "x-amz-acl" not in head  # S3 returns no ACL on GET / HEAD


@pytest.mark.parametrize("workers", [1, 2])
def test_an_update_is_in_the_spool_before_its_answer(
    s3_server: LocalS3, s3: S3Client, bucket: str, tmp_path: Path, workers: int
) -> None:
    """kill -9 right after the answers, the catalog lost too: the open batches recovered from
    the spool give the object its new tags (with two workers, the PUT and the update may land
    in different workers' batches)."""
    process = DaemonProcess(
        tmp_path,
        s3_server,
        batch={"linger_ms": 600_000},
        spool={"durability": "fsync"},
        server={"workers": workers},
    )
    try:
        process.start()
        client = process.client()
        client.put_object(Bucket=bucket, Key="k", Body=b"data", Tagging="a=1")
        client.put_object_tagging(
            Bucket=bucket, Key="k", Tagging={"TagSet": [{"Key": "b", "Value": "2"}]}
        )
        client.put_object_acl(Bucket=bucket, Key="k", ACL="bucket-owner-full-control")
        process.kill()
        shutil.rmtree(tmp_path / "spool" / "_catalog")
        process.start()
        client = process.client()
        assert _tags(client, bucket, "k") == [{"Key": "b", "Value": "2"}]
        assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"data"
        assert process.terminate() == 0
    finally:
        process.close()
    headers = [u["headers"] for d in indexes(s3, bucket) for u in d.get("updates", [])]
    assert {"x-amz-tagging": "b=2", "x-amz-acl": "bucket-owner-full-control"} in headers
