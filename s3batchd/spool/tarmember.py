"""Tar member encoding: safe member names, PAX headers carrying S3 attributes, and parsing back.

A member is ``<PAX extended header><ustar header><data><zero padding to 512>``. The S3 key,
ETag, Content-Type, user metadata, stored headers and checksums travel in PAX records under
the ``S3BATCHD.`` namespace, so a tar is self-describing: the index can be rebuilt from it.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Mapping

from s3batchd.constants import PAX_PREFIX, TAR_BLOCK
from s3batchd.records import ObjectRecord

#: Keys under this prefix always get a synthetic member name, so a synthetic name can never
#: collide with a key stored under its own name in the same tar.
SYNTHETIC_DIR = ".s3batchd"
_MAX_COMPONENT_BYTES = 255
#: Control characters and the backslash never go into a member path.
_UNSAFE_CHARACTER = re.compile("[\x00-\x1f\x7f\\\\]")

_KEY = PAX_PREFIX + "key"
_ETAG = PAX_PREFIX + "md5"
_CONTENT_TYPE = PAX_PREFIX + "content-type"
_MTIME = PAX_PREFIX + "mtime"
_SIZE = PAX_PREFIX + "size"
_META = PAX_PREFIX + "meta."
_HEADER = PAX_PREFIX + "header."
_CHECKSUM = PAX_PREFIX + "checksum."
_MULTIPART_ETAG = PAX_PREFIX + "etag"
_DELETED = PAX_PREFIX + "deleted"
_UPDATE_OF = PAX_PREFIX + "update-of"


def padded(size: int) -> int:
    """``size`` rounded up to a whole number of tar blocks."""
    return -(-size // TAR_BLOCK) * TAR_BLOCK


def is_safe_path(key: str) -> bool:
    """Whether ``key`` can be a member path that no extractor resolves outside its target.

    Safe: relative, ``/``-separated non-empty components, none of them ``.`` or ``..``, no
    control characters or backslashes, each component at most 255 bytes (NAME_MAX).
    """
    if not key or key.startswith(SYNTHETIC_DIR + "/") or key == SYNTHETIC_DIR:
        return False
    if _UNSAFE_CHARACTER.search(key):
        return False
    for part in key.split("/"):
        if part in ("", ".", ".."):
            return False
        # At most 4 UTF-8 bytes per character: only long components need encoding.
        if (
            len(part) * 4 > _MAX_COMPONENT_BYTES
            and len(part.encode("utf-8", "surrogatepass")) > _MAX_COMPONENT_BYTES
        ):
            return False
    return True


def member_name(key: str, seq: int) -> str:
    """The member path for ``key``: the key itself when safe, else a synthetic name."""
    return key if is_safe_path(key) else f"{SYNTHETIC_DIR}/{seq:012d}"


def encode_header(record: ObjectRecord, name: str) -> bytes:
    """The PAX + ustar header bytes of one regular-file member: byte for byte what
    ``tarfile.TarInfo.tobuf(PAX_FORMAT)`` writes (tests/test_tarmember.py checks it), encoded
    directly in the common case (an ASCII member name of at most 100 bytes, no undecodable
    characters), which is several times faster than building a TarInfo."""
    pax = _pax_records(record)
    size = record.size
    mtime = int(record.mtime)
    if (
        size < _MAX_OCTAL_11
        and mtime < _MAX_OCTAL_11
        and len(name) <= _USTAR_NAME
        and name.isascii()
    ):
        try:
            lines = [_pax_line(k, v) for k, v in pax.items()]
            records = "".join(lines).encode("utf-8")  # one encode for every record
        except UnicodeEncodeError:
            pass  # a surrogate-escaped value: tarfile writes hdrcharset=BINARY
        else:
            count = len(records)
            extended = _EXTENDED_BLOCKS.get(count)
            if extended is None:
                extended = _ustar_block(_PAX_NAME, 0, count, 0, tarfile.XHDTYPE)
                if len(_EXTENDED_BLOCKS) < _EXTENDED_CACHE:
                    _EXTENDED_BLOCKS[count] = extended
            member = _ustar_block(name.encode("ascii"), 0o644, size, mtime)
            return b"".join((extended, records, _ZEROS[: -count % TAR_BLOCK], member))
    return _encode_with_tarfile(record, name, pax)


_USTAR_NAME = 100
_MAX_OCTAL_11 = 8**11
_PAX_NAME = b"././@PaxHeader"
_MAGIC = tarfile.POSIX_MAGIC
_ZEROS = bytes(TAR_BLOCK)
_EXTENDED_CACHE = 4096
_EXTENDED_BLOCKS: dict[int, bytes] = {}
"""The extended header's ustar block by the length of its records (all it depends on)."""


def _pax_line(keyword: str, value: str) -> str:
    """One ``"<length> <keyword>=<value>\n"`` record as text (the length counts its own
    digits and the UTF-8 bytes of the rest)."""
    line = f" {keyword}={value}\n"
    size = len(line) if line.isascii() else len(line.encode("utf-8"))
    digits = len(str(size))
    total = size + digits
    if total >= 10**digits:  # the length's own digits carried it to one digit more
        total += 1
    return f"{total}{line}"


def _ustar_block(
    name: bytes, mode: int, size: int, mtime: int, typeflag: bytes = tarfile.REGTYPE
) -> bytes:
    mode_field = b"%07o\0" % mode
    size_field = b"%011o\0" % size
    mtime_field = b"%011o\0" % mtime
    # The checksum counts every byte with its own field as spaces: the fixed fields' share
    # is a constant, so only the variable fields are summed (not all 512 bytes).
    checksum = (
        _FIXED_SUM + sum(name) + sum(mode_field) + sum(size_field) + sum(mtime_field) + typeflag[0]
    )
    return b"".join(
        (
            name,
            _ZEROS[: _USTAR_NAME - len(name)],
            mode_field,
            _UID_GID,
            size_field,
            mtime_field,
            b"%06o\0 " % checksum,
            typeflag,
            _LINKNAME,
            _MAGIC,
            _REST,
        )
    )


_UID_GID = b"0000000\0" * 2
_LINKNAME = bytes(100)
_REST = bytes(TAR_BLOCK - 265)
_FIXED_SUM = sum(_UID_GID) + sum(b" " * 8) + sum(_MAGIC)


def _encode_with_tarfile(record: ObjectRecord, name: str, pax: dict[str, str]) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = record.size
    info.mtime = int(record.mtime)
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    info.pax_headers = pax
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _pax_records(record: ObjectRecord) -> dict[str, str]:
    pax = {
        _KEY: record.key,
        _ETAG: record.md5_hex,
        _SIZE: str(record.size),
        _CONTENT_TYPE: record.content_type,
        _MTIME: repr(record.mtime),
    }
    if record.multipart_etag:
        pax[_MULTIPART_ETAG] = record.multipart_etag
    if record.deleted:
        pax[_DELETED] = "1"
    if record.update_of is not None:
        pax[_UPDATE_OF] = repr(record.update_of)
    if record.metadata:  # most objects have none of these three
        pax.update(_prefixed(_META, record.metadata))
    if record.headers:
        pax.update(_prefixed(_HEADER, record.headers))
    if record.checksums:
        pax.update(_prefixed(_CHECKSUM, record.checksums))
    return pax


def _prefixed(prefix: str, values: Mapping[str, str]) -> dict[str, str]:
    return {prefix + name: value for name, value in values.items()}


def decode_record(info: tarfile.TarInfo) -> ObjectRecord | None:
    """The record a member carries, or None when it is not an s3batchd member."""
    pax = info.pax_headers
    if _KEY not in pax or _ETAG not in pax or not info.isreg():
        return None
    return ObjectRecord(
        key=pax[_KEY],
        size=info.size,
        md5_hex=pax[_ETAG],
        content_type=pax.get(_CONTENT_TYPE, "binary/octet-stream"),
        metadata=_unprefixed(_META, pax),
        headers=_unprefixed(_HEADER, pax),
        checksums=_unprefixed(_CHECKSUM, pax),
        mtime=float(pax.get(_MTIME, info.mtime)),
        multipart_etag=pax.get(_MULTIPART_ETAG, ""),
        deleted=pax.get(_DELETED) == "1",
        update_of=float(pax[_UPDATE_OF]) if _UPDATE_OF in pax else None,
    )


def _unprefixed(prefix: str, pax: Mapping[str, str]) -> dict[str, str]:
    return {name[len(prefix) :]: value for name, value in pax.items() if name.startswith(prefix)}
