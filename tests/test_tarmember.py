"""Tar member names and headers: safe paths, PAX round trips, what real tar tools make of them."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3batchd.constants import TAR_BLOCK, TAR_END
from s3batchd.records import ObjectRecord
from s3batchd.s3.body import BodyBuffer
from s3batchd.spool.files import SpoolFile
from s3batchd.spool.tarmember import (
    SYNTHETIC_DIR,
    _encode_with_tarfile,
    _pax_records,
    decode_record,
    encode_header,
    is_safe_path,
    member_name,
    padded,
)

BATCH_ID = "20261121T143000123Z-test-0001-000001"
MTIME = 1_763_735_400.125

#: Keys an extractor must never be allowed to resolve outside its target directory.
NASTY_KEYS = [
    "../escape.txt",
    "../../../../../../tmp/s3batchd-escape-test.txt",
    "/etc/passwd-s3batchd-test",
    "a/../../escape.txt",
    "a/./b",
    "./a",
    "..",
    ".",
    "a//b",
    "dir/",
    "back\\slash\\..\\..\\escape.txt",
    "nul\x00byte",
    "new\nline",
    "tab\tchar",
    "del\x7fchar",
    "x" * 256,
    "d/" + "é" * 128,
    f"{SYNTHETIC_DIR}/000000000001",
    SYNTHETIC_DIR,
]
#: Keys that are stored under their own names.
PLAIN_KEYS = [
    "plain.txt",
    "dir/sub/file.bin",
    "ключ/日本語/ファイル name with spaces.txt",
    "x" * 255,
    "deep/" + "/".join(f"level{i}" for i in range(40)) + "/leaf",
    ".hidden",
    "..dots-but-not-dotdot..",
    f"{SYNTHETIC_DIR}x/not-synthetic",
]


def make_record(
    key: str,
    data: bytes,
    *,
    content_type: str = "binary/octet-stream",
    metadata: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    checksums: dict[str, str] | None = None,
) -> ObjectRecord:
    return ObjectRecord(
        key=key,
        size=len(data),
        md5_hex=hashlib.md5(data, usedforsecurity=False).hexdigest(),
        content_type=content_type,
        metadata=metadata or {},
        headers=headers or {},
        checksums=checksums or {},
        mtime=MTIME,
    )


def key_of(info: tarfile.TarInfo) -> str:
    record = decode_record(info)
    assert record is not None, info.name
    return record.key


def make_body(data: bytes, tmp_path: Path) -> BodyBuffer:
    body = BodyBuffer(memory_limit=1 << 20, spill_dir=tmp_path / "bodies")
    body.write(data)
    return body


def read_members(header: bytes, data: bytes) -> list[tarfile.TarInfo]:
    blob = header + data + b"\0" * (padded(len(data)) - len(data)) + TAR_END
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as archive:
        return archive.getmembers()


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "a/b/c.txt",
        "ключ/日本語",
        "name with spaces",
        "x" * 255,
        "é" * 127,
        ".hidden",
        "...",
        "a..b/..c",
        f"{SYNTHETIC_DIR}x",
        f"x/{SYNTHETIC_DIR}/y",
    ],
)
def test_safe_paths(key: str) -> None:
    assert is_safe_path(key)
    assert member_name(key, 3) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "..",
        ".",
        "../a",
        "a/..",
        "a/../b",
        "a/./b",
        "/abs",
        "/",
        "a//b",
        "a/",
        "dir/sub/",
        "a\x00b",
        "a\nb",
        "a\rb",
        "a\x1fb",
        "a\x7fb",
        "a\\b",
        "..\\..\\windows",
        "x" * 256,
        "ok/" + "é" * 128,
        SYNTHETIC_DIR,
        f"{SYNTHETIC_DIR}/000000000001",
        f"{SYNTHETIC_DIR}/anything/else",
    ],
)
def test_unsafe_paths_get_synthetic_names(key: str) -> None:
    assert not is_safe_path(key)
    assert member_name(key, 7) == f"{SYNTHETIC_DIR}/000000000007"


def test_component_limit_counts_utf8_bytes() -> None:
    assert is_safe_path("€" * 85)  # 255 bytes
    assert not is_safe_path("€" * 85 + "x")  # 256 bytes, 86 characters
    assert is_safe_path("/".join(["x" * 255] * 4))  # long paths are fine, components are not


def test_synthetic_names_are_unique_per_sequence() -> None:
    names = {member_name("../x", seq) for seq in range(100)}
    assert len(names) == 100
    assert all(is_safe_path(name.replace(SYNTHETIC_DIR, "s", 1)) for name in names)


def test_padded() -> None:
    assert [padded(n) for n in (0, 1, 511, 512, 513, 1024, 3000)] == [
        0,
        512,
        512,
        512,
        1024,
        1024,
        3072,
    ]


@pytest.mark.parametrize(
    "key",
    ["plain.txt", "ключ/日本語/ファイル.txt", "emoji/🪣/🗝️", "../evil", "x" * 300, "a\nb"],
)
def test_header_round_trip(key: str) -> None:
    data = b"payload for " + key.encode("utf-8")
    record = make_record(
        key,
        data,
        content_type="text/plain; charset=utf-8",
        metadata={"author": "Zoë", "equation": "a=b+c", "multi": "line1\nline2", "empty": ""},
        headers={
            "cache-control": "max-age=60",
            "content-disposition": 'attachment; filename="ä.txt"',
            "content-language": "de",
        },
        checksums={"crc32": "U+m5Tw==", "sha256": "6hdhUjGEpKTOQT9ShKGhvrwDqpBMxV+XUTMjy7LipwY="},
    )
    name = member_name(key, 11)
    header = encode_header(record, name)

    [info] = read_members(header, data)

    assert info.name == name
    assert info.isreg()
    assert info.size == len(data)
    assert info.mtime == int(MTIME)
    assert info.mode == 0o644
    assert decode_record(info) == record


def test_header_round_trip_minimal_record() -> None:
    record = ObjectRecord(key="k", size=0, md5_hex=hashlib.md5(b"").hexdigest())
    [info] = read_members(encode_header(record, "k"), b"")
    decoded = decode_record(info)
    assert decoded == record
    assert decoded is not None
    assert decoded.metadata == {}
    assert decoded.headers == {}
    assert decoded.checksums == {}
    assert decoded.etag == '"d41d8cd98f00b204e9800998ecf8427e"'


def test_mtime_survives_exactly() -> None:
    for mtime in (0.0, 1.5, 1_763_735_400.123456, 4_102_444_800.999999):
        record = ObjectRecord(key="k", size=0, md5_hex="0" * 32, mtime=mtime)
        [info] = read_members(encode_header(record, "k"), b"")
        decoded = decode_record(info)
        assert decoded is not None
        assert decoded.mtime == mtime


def test_decode_ignores_foreign_members() -> None:
    plain = tarfile.TarInfo("foreign.txt")
    plain.size = 3
    buf = plain.tobuf(tarfile.PAX_FORMAT)
    [info] = read_members(buf, b"abc")
    assert decode_record(info) is None


def test_decode_ignores_directories_with_our_headers() -> None:
    record = make_record("dir", b"")
    header = encode_header(record, "dir")
    [info] = read_members(header, b"")
    assert decode_record(info) is not None
    info.type = tarfile.DIRTYPE
    assert decode_record(info) is None


@pytest.mark.parametrize("extra_bytes", [0, 100, 400, 600, 1500, 5000])
def test_pax_records_move_the_data_start(extra_bytes: int) -> None:
    data = bytes(range(256)) * 3
    record = make_record("k" * 200, data, metadata={"pad": "v" * extra_bytes})
    header = encode_header(record, member_name(record.key, 0))

    assert len(header) % TAR_BLOCK == 0
    assert len(header) >= 3 * TAR_BLOCK  # PAX header block, PAX data, ustar header
    [info] = read_members(header, data)
    assert info.offset_data == len(header)

    # tarfile's own writer puts the data at the same place: §3 of the style guide says the data
    # starts at tar.offset - round_up(size, 512) after addfile, PAX records included.
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:", format=tarfile.PAX_FORMAT) as archive:
        ref = tarfile.TarInfo(info.name)
        ref.size = len(data)
        ref.mtime = info.mtime
        ref.mode = 0o644
        ref.pax_headers = dict(info.pax_headers)
        archive.addfile(ref, io.BytesIO(data))
        assert archive.offset - padded(len(data)) == len(header)
    assert raw.getvalue()[len(header) : len(header) + len(data)] == data


def test_long_unicode_key_is_stored_in_pax() -> None:
    key = "日本語/" * 60 + "end"  # 541 bytes of UTF-8, far beyond ustar's 100+155
    data = b"x"
    [info] = read_members(encode_header(make_record(key, data), key), data)
    assert info.name == key
    assert info.pax_headers["path"] == key
    decoded = decode_record(info)
    assert decoded is not None
    assert decoded.key == key


def write_spool(tmp_path: Path, keys: list[str]) -> tuple[Path, dict[str, bytes]]:
    """A sealed spool holding one member per key; returns its path and data by member name."""
    spool = SpoolFile.create(tmp_path / "spool", bucket="b", batch_id=BATCH_ID, prefix="p/")
    by_member: dict[str, bytes] = {}
    for i, key in enumerate(keys):
        data = f"object {i}: {key!r}\n".encode() * (i % 4)
        entry = spool.append(make_record(key, data), make_body(data, tmp_path))
        by_member[entry.member] = data
    spool.write_end()
    spool.sync()
    return spool.finish("records").path, by_member


def gnu_tar(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        ["tar", "--quoting-style=literal", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=cwd,
        check=False,
        timeout=60,
    )


def test_spool_lists_cleanly_with_tarfile_and_gnu_tar(tmp_path: Path) -> None:
    keys = PLAIN_KEYS + NASTY_KEYS
    path, by_member = write_spool(tmp_path, keys)
    assert len(by_member) == len(keys)  # member names never collide

    with tarfile.open(path, mode="r:") as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == list(by_member)
        assert [key_of(m) for m in members] == keys
        for m in members:
            extracted = archive.extractfile(m)
            assert extracted is not None
            assert extracted.read() == by_member[m.name]

    verbose = gnu_tar("-tvf", str(path))
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stderr == ""
    assert len(verbose.stdout.splitlines()) == len(keys)
    names = gnu_tar("-tf", str(path))
    assert names.returncode == 0, names.stderr
    assert names.stderr == ""
    assert names.stdout.splitlines() == list(by_member)


def snapshot(root: Path, *, skip: Path) -> set[Path]:
    return {p for p in root.rglob("*") if skip not in p.parents and p != skip}


def assert_extracted_inside(dest: Path, by_member: dict[str, bytes]) -> None:
    found = {p.relative_to(dest).as_posix(): p for p in dest.rglob("*") if not p.is_dir()}
    assert set(found) == set(by_member)
    for name, p in found.items():
        assert not p.is_symlink()
        assert p.resolve().is_relative_to(dest.resolve())
        assert p.read_bytes() == by_member[name]


def test_gnu_tar_extracts_nasty_keys_inside_its_directory(tmp_path: Path) -> None:
    path, by_member = write_spool(tmp_path, NASTY_KEYS + PLAIN_KEYS)
    work = tmp_path / "work"
    dest = work / "a" / "b" / "c" / "d" / "dest"  # deep enough for ../../../.. to land in work
    dest.mkdir(parents=True)
    victim = work / "escape.txt"
    victim.write_bytes(b"untouched")
    before = snapshot(tmp_path, skip=dest)

    result = gnu_tar("-xf", str(path), "-C", str(dest))

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert snapshot(tmp_path, skip=dest) == before
    assert victim.read_bytes() == b"untouched"
    assert not Path("/etc/passwd-s3batchd-test").exists()
    assert not (Path(tempfile.gettempdir()) / "s3batchd-escape-test.txt").exists()
    assert_extracted_inside(dest, by_member)


def test_tarfile_data_filter_accepts_every_member(tmp_path: Path) -> None:
    path, by_member = write_spool(tmp_path, NASTY_KEYS + PLAIN_KEYS)
    dest = tmp_path / "out" / "dest"
    dest.mkdir(parents=True)
    before = snapshot(tmp_path, skip=dest)
    with tarfile.open(path, mode="r:") as archive:
        archive.extractall(dest, filter="data")  # raises on any path that leaves dest
    assert snapshot(tmp_path, skip=dest) == before
    assert_extracted_inside(dest, by_member)


_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=300)
@given(
    key=st.one_of(st.text(min_size=1, max_size=120), st.text(alphabet="ab/._-", min_size=1)),
    size=st.integers(min_value=0, max_value=2**40),
    mtime=st.floats(min_value=0, max_value=2**33, allow_nan=False),
    metadata=st.dictionaries(st.text(alphabet="abc-", min_size=1, max_size=8), _TEXT, max_size=3),
    content_type=_TEXT.filter(bool),
    deleted=st.booleans(),
)
def test_header_encoding_is_what_tarfile_writes(
    key: str, size: int, mtime: float, metadata: dict[str, str], content_type: str, deleted: bool
) -> None:
    """The direct encoder and tarfile agree byte for byte (names of any length and script,
    values near the record-length boundaries, surrogates in keys)."""
    record = ObjectRecord(
        key=key,
        size=size,
        md5_hex="0" * 32,
        content_type=content_type,
        metadata=metadata,
        mtime=mtime,
        deleted=deleted,
    )
    name = member_name(key, 7)
    expected = _encode_with_tarfile(record, name, _pax_records(record))
    assert encode_header(record, name) == expected
