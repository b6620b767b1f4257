"""What the multipart handlers share: the held upload a request names (in the spool's
:class:`~s3batchd.spool.uploads.UploadStore`), their XML answers, and the bucket's error answers
passed on unchanged.
"""

from __future__ import annotations

from starlette.responses import Response

from s3batchd.errors import NoSuchUpload, S3Error
from s3batchd.forward.passthrough import Call
from s3batchd.s3.xml import local_name, parse_or_none
from s3batchd.spool.uploads import Upload, UploadStore

__all__ = [
    "S3_NS",
    "find_text",
    "held_upload",
    "open_upload",
    "still_open",
    "upload_store",
    "upstream_error",
    "xml_response",
]

#: The namespace of S3's XML answers.
S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'


def upload_store(call: Call) -> UploadStore:
    """The client multipart uploads the daemon holds."""
    store: UploadStore = call.daemon.uploads
    return store


def held_upload(call: Call) -> Upload | None:
    """The held upload the request's ``uploadId`` names, completed or not; None if none."""
    upload_id = call.target.query.get("uploadId", "")
    return upload_store(call).get(upload_id, call.target.bucket, call.target.key)


def open_upload(call: Call) -> Upload | None:
    """The held upload the request names, None when the bucket holds it; NoSuchUpload once
    it was completed (its record is kept for a while only to answer a retried Complete)."""
    upload = held_upload(call)
    if upload is not None and upload.completed:
        raise NoSuchUpload()
    return upload


def still_open(upload: Upload | None) -> Upload:
    """The upload read again under its lock: NoSuchUpload if it went away or was completed."""
    if upload is None or upload.completed:
        raise NoSuchUpload()
    return upload


def xml_response(body: str, headers: dict[str, str] | None = None) -> Response:
    """An S3 XML answer (declaration added)."""
    return Response((XML_HEAD + body).encode(), media_type="application/xml", headers=headers or {})


def upstream_error(status: int, body: bytes) -> S3Error:
    """The bucket's error answer as an S3Error the client gets unchanged (code, message,
    status)."""
    code = find_text(body, "Code") or "InternalError"
    message = find_text(body, "Message") or "The bucket refused the request."
    error = S3Error(message)
    error.code = code
    error.status_code = status if status >= 400 else 502
    return error


def find_text(body: bytes, name: str) -> str:
    """The text of the first ``name`` element of an XML answer; empty if none or unparsable."""
    root = parse_or_none(body)
    if root is None:
        return ""
    for node in root.iter():
        if local_name(node.tag) == name:
            return node.text or ""
    return ""
