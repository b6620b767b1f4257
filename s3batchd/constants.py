"""Units and the S3 limits the daemon respects."""

from __future__ import annotations

KB = 1024
MB = 1024 * KB
GB = 1024 * MB

#: S3 multipart rules: every part but the last is at least 5 MiB, at most 5 GiB, 10,000 parts.
MIN_PART_BYTES = 5 * MB
MAX_PART_BYTES = 5 * GB
MAX_PARTS = 10_000
#: Largest object a single PutObject may carry.
MAX_SINGLE_PUT_BYTES = 5 * GB
#: Longest S3 key, in bytes of UTF-8.
MAX_KEY_BYTES = 1024
#: User metadata (names and values of x-amz-meta-*) is limited to 2 KB by S3.
MAX_USER_METADATA_BYTES = 2 * KB

#: Tar block size and the end-of-archive marker (two zero blocks).
TAR_BLOCK = 512
TAR_END = b"\0" * (2 * TAR_BLOCK)

#: Prefix of the response headers that tell a client where its object lives.
HEADER_PREFIX = "x-s3batchd-"
#: Namespace of the PAX records that carry an object's S3 attributes inside the tar: user
#: extended attributes in the form GNU tar, bsdtar and Python tarfile all read without warnings
#: (``tar --xattrs -x`` even restores them as ``user.s3batchd.*`` xattrs).
PAX_PREFIX = "SCHILY.xattr.user.s3batchd."

INDEX_FORMAT = "s3batchd.index"
INDEX_VERSION = 1
#: The index version of a batch written by compaction (``replaces``: docs/index-format.md).
INDEX_VERSION_COMPACTED = 2
