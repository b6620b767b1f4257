"""s3batchd.reader and ``s3batchd ls`` / ``extract`` against a real S3 (SeaweedFS), with objects
written through the daemon by boto3 exactly as an application would."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import random
import re
import traceback
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner, Result

from s3batchd import reader
from s3batchd.cli.read import PROGRESS_MIN_OBJECTS, extract, ls
from s3batchd.cli.seaweed import LocalS3
from s3batchd.constants import INDEX_VERSION, INDEX_VERSION_COMPACTED
from s3batchd.errors import S3BatchdError
from s3batchd.index import IndexEntry, WriterId, new_batch_id, render_index, tar_key
from s3batchd.reader import IntegrityError, Location, ReadStats
from s3batchd.records import ObjectRecord
from s3batchd.s3.checksums import ALGORITHMS, new_hasher
from tests.batches import INDEX_SCHEMA, index_validator, indexed_objects, indexes
from tests.conftest import CHECKSUM_MODES, ChecksumMode, Daemon, DaemonFactory, wait_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def checksum(algorithm: str, data: bytes) -> str:
    """The base64 checksum an SDK would send."""
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return base64.b64encode(hasher.digest()).decode()


WRONG_ETAG = '"' + "0" * 32 + '"'


def put(client: S3Client, bucket: str, key: str, body: bytes, **extra: Any) -> Location:
    """PutObject through the daemon; the location its response headers give."""
    answer = client.put_object(Bucket=bucket, Key=key, Body=body, **extra)
    return Location.from_headers(answer["ResponseMetadata"]["HTTPHeaders"])


def put_all(client: S3Client, bucket: str, bodies: Mapping[str, bytes]) -> dict[str, Location]:
    """Concurrent PUTs, as a busy application sends them."""
    with ThreadPoolExecutor(8) as pool:
        found = pool.map(lambda key: put(client, bucket, key, bodies[key]), bodies)
        return dict(zip(bodies, found, strict=True))


@pytest.fixture
def quiet_daemon(start_daemon: DaemonFactory) -> Daemon:
    """A daemon whose batches are sealed only when it stops: one batch per bucket."""
    return start_daemon(batch={"linger_ms": 600_000})


def only_batch(s3: S3Client, bucket: str) -> dict[str, Any]:
    (document,) = indexes(s3, bucket)
    return document


def explain(result: Result) -> str:
    """What a CLI run printed, and its traceback if it raised."""
    if result.exc_info is None or isinstance(result.exception, SystemExit):
        return result.output
    return result.output + "".join(traceback.format_exception(*result.exc_info))


def cli(s3_server: LocalS3, *args: str) -> Result:
    """Run a read command as a user would, with the bucket's credentials in the environment."""
    env = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    command = {"ls": ls, "extract": extract}[args[0]]
    return CliRunner(env=env).invoke(command, [*args[1:], "--endpoint-url", s3_server.endpoint_url])


@pytest.mark.parametrize("checksums", CHECKSUM_MODES)
def test_get_reads_each_object_by_its_response_headers(
    daemon: Daemon, s3: S3Client, bucket: str, checksums: ChecksumMode
) -> None:
    client = daemon.client(checksums)
    rng = random.Random(11)
    bodies = {f"one/{n}": rng.randbytes(size) for n, size in enumerate([0, 1, 511, 512, 9000])}
    located = put_all(client, bucket, bodies)
    extra = put(client, bucket, "sha/256", b"with sha256", ChecksumAlgorithm="SHA256")
    wait_for(lambda: indexed_objects(s3, bucket) == len(bodies) + 1)

    stats = ReadStats()
    for key, location in located.items():
        assert location.bucket == bucket
        assert location.etag == f'"{hashlib.md5(bodies[key]).hexdigest()}"'
        if checksums == "when_required":
            assert location.checksums == {}
        elif location.length:
            assert set(location.checksums) == {"crc32"}
        assert reader.get(s3, location, stats=stats) == bodies[key], key
    assert stats.requests == len(bodies) - 1  # the empty object costs no request
    assert stats.objects == len(bodies)
    digest = base64.b64encode(hashlib.sha256(b"with sha256").digest()).decode()
    assert extra.checksums == {"sha256": digest}
    assert reader.get(s3, extra) == b"with sha256"


def test_location_from_headers_and_from_index_agree(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    answer = daemon.client().put_object(Bucket=bucket, Key="k", Body=b"twelve bytes")
    headers = answer["ResponseMetadata"]["HTTPHeaders"]
    location = Location.from_headers(headers)
    shouted = {name.upper(): value for name, value in headers.items()}
    assert Location.from_headers(shouted) == location
    assert location.byte_range == headers["x-s3batchd-range"]
    assert f"s3://{location.bucket}/{location.tar_key}" == headers["x-s3batchd-tar"]
    wait_for(lambda: indexed_objects(s3, bucket) == 1)
    document = only_batch(s3, bucket)
    (entry,) = document["objects"]
    from_index = Location.from_index_entry(bucket, document["tar"]["key"], entry)
    assert from_index == location
    assert from_index.checksums == location.checksums == {"crc32": answer["ChecksumCRC32"]}
    with pytest.raises(reader.ReaderError, match="x-s3batchd-tar"):
        Location.from_headers({"etag": '"x"'})
    with pytest.raises(reader.ReaderError, match="disagrees"):
        Location.from_headers({**headers, "x-s3batchd-range": "bytes=0-1"})


def test_get_many_coalesces_one_batch_into_few_requests(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    count = 200
    daemon = start_daemon(batch={"linger_ms": 60_000, "max_records": count})
    rng = random.Random(5)
    bodies = {f"many/{n:03d}": rng.randbytes(rng.choice([0, 10, 700, 3000])) for n in range(count)}
    located = put_all(daemon.client("when_required"), bucket, bodies)
    wait_for(lambda: indexed_objects(s3, bucket) == count)
    assert len({location.tar_key for location in located.values()}) == 1

    keys = list(bodies)
    rng.shuffle(keys)  # any order in, the same order out
    wanted = [located[key] for key in keys]
    stats = ReadStats()
    assert reader.get_many(s3, wanted, stats=stats) == [bodies[key] for key in keys]
    assert stats.requests == 1  # the whole batch is well under max_span
    assert stats.objects == count

    small_spans = ReadStats()
    data = reader.get_many(s3, wanted, max_span=64 * 1024, max_concurrency=3, stats=small_spans)
    assert data == [bodies[key] for key in keys]
    tar_size = only_batch(s3, bucket)["tar"]["size"]
    assert tar_size // (64 * 1024) <= small_spans.requests <= count // 10

    no_gaps = ReadStats()  # tar headers separate all objects: no gap allowed, no coalescing
    assert reader.get_many(s3, wanted, max_gap=0, stats=no_gaps) == [bodies[k] for k in keys]
    assert no_gaps.requests == sum(1 for body in bodies.values() if body)
    assert reader.get_many(s3, []) == []


def test_wrong_expectations_raise_integrity_error(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    client = daemon.client()
    location = put(client, bucket, "real", b"the real bytes")
    empty = put(client, bucket, "empty", b"")
    wait_for(lambda: indexed_objects(s3, bucket) == 2)
    assert reader.get(s3, location) == b"the real bytes"

    wrong_etag = dataclasses.replace(location, etag=WRONG_ETAG)
    with pytest.raises(IntegrityError, match="MD5"):
        reader.get(s3, wrong_etag)
    with pytest.raises(IntegrityError, match="MD5"):
        reader.get_many(s3, [location, wrong_etag])
    bad_crc = dataclasses.replace(location, etag=None, checksums={"crc32": "AAAAAA=="})
    with pytest.raises(IntegrityError, match="crc32"):
        reader.get(s3, bad_crc)
    with pytest.raises(IntegrityError):  # one byte more: the MD5 no longer matches
        reader.get(s3, dataclasses.replace(location, length=location.length + 1))
    stats = ReadStats()
    with pytest.raises(IntegrityError):
        reader.get(s3, dataclasses.replace(empty, etag=WRONG_ETAG), stats=stats)
    assert stats.requests == 0
    assert issubclass(IntegrityError, S3BatchdError)

    missing = dataclasses.replace(location, tar_key=location.tar_key + ".gone")
    with pytest.raises(reader.NotFoundError):
        reader.get(s3, missing)
    beyond = dataclasses.replace(location, offset=1 << 30, etag=None)
    with pytest.raises(IntegrityError, match="beyond"):
        reader.get(s3, beyond)
    with pytest.raises(reader.ReaderError, match="single-part"):
        dataclasses.replace(location, etag='"abc-2"')


def test_get_many_groups_by_tar(start_daemon: DaemonFactory, s3: S3Client, bucket: str) -> None:
    daemon = start_daemon(batch={"linger_ms": 60_000, "max_records": 10})
    bodies = {f"grouped/{n:02d}": f"object {n}".encode() for n in range(30)}
    client = daemon.client()
    located = {key: put(client, bucket, key, body) for key, body in bodies.items()}
    wait_for(lambda: indexed_objects(s3, bucket) == 30)
    assert len({location.tar_key for location in located.values()}) == 3
    keys = sorted(bodies, reverse=True)
    stats = ReadStats()
    data = reader.get_many(s3, [located[k] for k in keys], max_concurrency=3, stats=stats)
    assert data == [bodies[key] for key in keys]
    assert stats.requests == 3  # one per tar


@pytest.mark.parametrize("checksums", CHECKSUM_MODES)
def test_load_index_and_iter_batch_give_every_object(
    quiet_daemon: Daemon, s3: S3Client, bucket: str, checksums: ChecksumMode
) -> None:
    rng = random.Random(2)
    bodies = {f"batch/{n:02d}": rng.randbytes(rng.randrange(0, 5000)) for n in range(30)}
    client = quiet_daemon.client(checksums)
    for key, body in bodies.items():  # in order: the batch lists them in this order
        put(client, bucket, key, body)
    put(client, bucket, "batch/00", b"second version")  # a key PUT twice is listed twice
    quiet_daemon.stop()
    document = only_batch(s3, bucket)
    tar = document["tar"]["key"]
    index_key = tar.removesuffix(".tar") + ".index.json"
    assert reader.load_index(s3, bucket, tar) == document
    assert reader.load_index(s3, bucket, index_key) == document

    stats = ReadStats()
    read = list(reader.iter_batch(s3, bucket, tar, stats=stats))
    expected = [*bodies.items(), ("batch/00", b"second version")]
    assert [(entry["key"], data) for entry, data in read] == expected
    assert [entry for entry, _ in read] == document["objects"]
    assert stats.requests == 2  # the index, then the whole small tar in one ranged GET
    spans = ReadStats()
    again = list(reader.iter_batch(s3, bucket, index_key, max_span=8192, stats=spans))
    assert again == read
    assert 2 < spans.requests < len(expected)

    with pytest.raises(reader.NotABatchError):
        reader.load_index(s3, bucket, "batch/00")
    with pytest.raises(reader.NotFoundError):
        reader.load_index(s3, bucket, "nothing/here.tar")
    s3.put_object(Bucket=bucket, Key="fake.index.json", Body=b'{"format": "other"}')
    with pytest.raises(reader.NotABatchError):
        reader.load_index(s3, bucket, "fake.index.json")


def test_a_corrupted_tar_is_detected(quiet_daemon: Daemon, s3: S3Client, bucket: str) -> None:
    location = put(quiet_daemon.client(), bucket, "victim", b"A" * 1000)
    quiet_daemon.stop()
    tar = bytearray(s3.get_object(Bucket=bucket, Key=location.tar_key)["Body"].read())
    tar[location.offset + 500] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=location.tar_key, Body=bytes(tar))
    with pytest.raises(IntegrityError):
        reader.get(s3, location)
    with pytest.raises(IntegrityError):
        list(reader.iter_batch(s3, bucket, location.tar_key))


def test_cli_ls(
    quiet_daemon: Daemon, s3: S3Client, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    client = quiet_daemon.client()
    bodies = {"ls/a.txt": b"alpha", "ls/empty": b"", "ls/tab\there": b"a tab"}
    for key, body in bodies.items():
        put(client, bucket, key, body)
    quiet_daemon.stop()
    document = only_batch(s3, bucket)
    url = f"s3://{bucket}/{document['tar']['key']}"

    result = cli(s3_server, "ls", url)
    assert result.exit_code == 0, explain(result)
    lines = result.stdout.splitlines()
    assert len(lines) == len(bodies)
    for line, entry in zip(lines, document["objects"], strict=True):
        offset, length, etag, key = line.split(maxsplit=3)
        assert (int(offset), int(length), etag) == (entry["offset"], entry["length"], entry["etag"])
        assert key == (json.dumps(entry["key"]) if "\t" in entry["key"] else entry["key"])

    as_json = cli(s3_server, "ls", "--json", url.removesuffix(".tar") + ".index.json")
    assert as_json.exit_code == 0, explain(as_json)
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == document["objects"]

    config = tmp_path / "s3batchd.toml"  # the endpoint from the daemon's settings instead
    config.write_text(f'[upstream]\nendpoint_url = "{s3_server.endpoint_url}"\n')
    env = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}
    configured = CliRunner(env={**env, "S3BATCHD_CONFIG": str(config)}).invoke(ls, [url])
    assert configured.exit_code == 0, explain(configured)
    assert configured.stdout == result.stdout


def test_iter_batch_and_ls_give_the_tags_and_acl_of_the_index_updates(
    quiet_daemon: Daemon, s3: S3Client, s3_server: LocalS3, bucket: str
) -> None:
    client = quiet_daemon.client()
    put(client, bucket, "tagged", b"one", Tagging="old=1", CacheControl="no-cache")
    put(client, bucket, "plain", b"two")
    client.put_object_tagging(
        Bucket=bucket, Key="tagged", Tagging={"TagSet": [{"Key": "new", "Value": "2"}]}
    )
    client.put_object_acl(Bucket=bucket, Key="tagged", ACL="bucket-owner-full-control")
    quiet_daemon.stop()
    document = only_batch(s3, bucket)
    assert len(document["updates"]) == 2
    assert document["objects"][0]["headers"]["x-amz-tagging"] == "old=1"  # as written
    current = {
        "cache-control": "no-cache",
        "x-amz-tagging": "new=2",
        "x-amz-acl": "bucket-owner-full-control",
    }
    read = list(reader.iter_batch(s3, bucket, document["tar"]["key"]))
    assert [entry["headers"] for entry, _ in read] == [current, {}]
    assert [data for _, data in read] == [b"one", b"two"]
    assert reader.load_index(s3, bucket, document["tar"]["key"]) == document  # as stored
    listed = cli(s3_server, "ls", "--json", f"s3://{bucket}/{document['tar']['key']}")
    assert listed.exit_code == 0, explain(listed)
    assert [json.loads(line)["headers"] for line in listed.stdout.splitlines()] == [current, {}]


def test_parse_s3_url_for_keys_and_for_prefixes() -> None:
    assert reader.parse_s3_url("s3://b/k/x.tar") == ("b", "k/x.tar")
    assert reader.parse_s3_url("s3://b/", prefix=True) == ("b", "")
    assert reader.parse_s3_url("s3://b", prefix=True) == ("b", "")
    assert reader.parse_s3_url("s3://b/p/", prefix=True) == ("b", "p/")
    for url, message in (
        ("b/k", "not an s3:// URL"),
        ("s3:///k", "no bucket in"),
        ("s3://b/", "not an s3://<bucket>/<key> URL"),
    ):
        with pytest.raises(reader.ReaderError, match=re.escape(message)):
            reader.parse_s3_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://bucket/key.tar", "not an s3:// URL"),
        ("s3://bucket-only", "not an s3://<bucket>/<key> URL"),
        ("s3://{bucket}/some/object.bin", "not a batch key"),
        ("s3://{bucket}/missing/batch.tar", "no such key"),
        ("s3://{bucket}/plain.index.json", "not a batch"),
    ],
)
def test_cli_refuses_what_is_not_a_batch(
    s3: S3Client, s3_server: LocalS3, bucket: str, url: str, message: str, tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="plain.index.json", Body=b"[1, 2, 3]")
    for command in ("ls", "extract"):
        args = [url.format(bucket=bucket)] + (
            [str(tmp_path / "out")] if command == "extract" else []
        )
        result = cli(s3_server, command, *args)
        assert result.exit_code == 1, explain(result)
        assert message in result.stderr
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


HOSTILE_KEYS = [
    "a/../../escape",
    "../x",
    "..",
    "/abs/olute",
    "dir/",
    "a//b",
    "./dot",
    "nul\0byte",
]


def test_cli_extract_restores_exact_bytes_and_refuses_escapes(
    quiet_daemon: Daemon, s3: S3Client, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    rng = random.Random(9)
    safe = {f"data/{n:02d}.bin": rng.randbytes(rng.randrange(0, 3000)) for n in range(15)}
    safe["ünïcode dir/fïle ü.txt"] = b"unicode path"
    safe["twice"] = b"first version"
    safe["link-dir/inside"] = b"must not go through the link"
    safe["victim"] = b"replaces the symlink, never writes through it"
    client = quiet_daemon.client("when_required")
    for key, body in safe.items():
        put(client, bucket, key, body)
    for key in HOSTILE_KEYS:
        put(client, bucket, key, b"hostile " + key.encode())
    put(client, bucket, "twice", b"second version")  # the last PUT of a key wins, as in S3
    quiet_daemon.stop()
    document = only_batch(s3, bucket)
    sent = [*safe, *HOSTILE_KEYS, "twice"]
    assert [entry["key"] for entry in document["objects"]] == sent  # verbatim, not normalised
    assert len(sent) > PROGRESS_MIN_OBJECTS

    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "link-dir").symlink_to(outside)
    (tmp_path / "target").write_bytes(b"untouched")
    (out / "victim").symlink_to(tmp_path / "target")

    result = cli(s3_server, "extract", f"s3://{bucket}/{document['tar']['key']}", str(out))
    assert result.exit_code == 1, explain(result)
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == len(HOSTILE_KEYS) + 1  # the hostile keys and link-dir/inside
    for key in HOSTILE_KEYS:
        shown = json.dumps(key) if "\0" in key else key
        assert any(line.startswith(f"skipped {shown}: ") for line in skipped), key
    assert "extracting" in result.stderr  # the progress bar of a batch this size
    written = len(sent) - len(skipped)  # "twice" is written twice
    assert f"extracted {written} of {len(sent)} objects into {out}" in result.stdout

    safe["twice"] = b"second version"
    del safe["link-dir/inside"]
    files = {
        str(path.relative_to(out)): path.read_bytes()
        for path in out.rglob("*")
        if path.is_file() and not path.is_symlink()
    }
    assert files == safe
    assert not (out / "victim").is_symlink()
    assert (tmp_path / "target").read_bytes() == b"untouched"
    assert (out / "link-dir").is_symlink()
    assert not any(outside.iterdir())
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]
    assert {"escape", "x", "abs", "olute"}.isdisjoint(p.name for p in tmp_path.rglob("*"))


def test_cli_extract_reports_a_corrupt_object(
    quiet_daemon: Daemon, s3: S3Client, s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    client = quiet_daemon.client()
    good = put(client, bucket, "good", b"G" * 100)
    bad = put(client, bucket, "bad", b"B" * 100)
    quiet_daemon.stop()
    tar = bytearray(s3.get_object(Bucket=bucket, Key=good.tar_key)["Body"].read())
    tar[bad.offset] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=good.tar_key, Body=bytes(tar))
    out = tmp_path / "out"
    result = cli(s3_server, "extract", f"s3://{bucket}/{good.tar_key}", str(out))
    assert result.exit_code == 1
    assert "skipped bad: corrupt: " in result.stderr
    assert "MD5" in result.stderr
    assert "extracting" not in result.stderr  # two objects: no progress bar
    assert (out / "good").read_bytes() == b"G" * 100
    assert sorted(p.name for p in out.iterdir()) == ["good"]  # no temporary file left


def test_index_schema_matches_render_index() -> None:
    schema = json.loads(INDEX_SCHEMA.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "urn:s3batchd:schema:index"  # one schema, every version
    assert schema["properties"]["version"] == {"enum": [INDEX_VERSION, INDEX_VERSION_COMPACTED]}
    batch_id = new_batch_id(WriterId.generate("Host_Name.example"), 7, now=1_800_000_000.0)
    record = ObjectRecord(
        key="ключ/../x",
        size=3,
        md5_hex=hashlib.md5(b"abc").hexdigest(),
        content_type="text/plain",
        metadata={"owner": "me", "x_y-z": ""},
        headers={"cache-control": "no-cache", "x-amz-storage-class": "STANDARD"},
        checksums={name: checksum(name, b"abc") for name in ALGORITHMS},
        mtime=1_800_000_000.25,
    )
    entries = [IndexEntry(record, ".s3batchd/000000000000", 1536)]
    entries.append(IndexEntry(dataclasses.replace(record, key="ok", checksums={}), "ok", 3584))
    document = json.loads(
        render_index(
            bucket="demo",
            batch_id=batch_id,
            tar_key=tar_key("any/prefix/", batch_id),
            tar_size=5120,
            entries=entries,
        )
    )
    assert document["created_at"] == "2027-01-15T08:00:00.000Z"
    index_validator().validate(document)
    changes: list[dict[str, Any]] = [
        {"extra": 1},
        {"created_at": "2027-01-15T08:00:00Z"},
        {"tar": {**document["tar"], "size": 5000}},
        {"objects": []},
    ]
    for change in changes:
        assert not index_validator().is_valid({**document, **change}), change
    tombstone = {"key": "gone", "member": "gone", "deleted_at": "2027-01-15T08:00:01.000Z"}
    assert index_validator().is_valid({**document, "objects": [], "tombstones": [tombstone]})
    assembled = {**document["objects"][1], "etag": f'"{"0" * 32}-3"', "md5": "1" * 32}
    assert index_validator().is_valid({**document, "objects": [assembled]})
    for field, value in (
        ("etag", hashlib.md5(b"abc").hexdigest()),
        ("member", "a/../x"),
        ("checksums", {"md5": "kAFQmDzST7DWlj99KOF/cg=="}),
        ("headers", {"x-custom": "1"}),
        ("offset", -512),
    ):
        changed = {**document, "objects": [{**document["objects"][0], field: value}]}
        assert not index_validator().is_valid(changed), field
