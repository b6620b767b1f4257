"""Which S3 operation a request is: the name ``passthrough.operations`` and the logs use.

S3 tells operations apart by method, by whether a bucket and a key are addressed, by
sub-resource query parameters and by a few headers (``x-amz-copy-source``). Bucket and object
sub-resources that only configure something (``?tagging``, ``?policy``, ``?lifecycle`` ...) are
grouped as ``<Method>BucketSubresource`` / ``<Method>ObjectSubresource`` except the common ones
named below.
"""

from __future__ import annotations

from s3batchd.s3.addressing import Target

#: Object-level sub-resources with a name of their own, by method.
_OBJECT_SUBRESOURCES: dict[str, dict[str, str]] = {
    "GET": {
        "uploadId": "ListParts",
        "tagging": "GetObjectTagging",
        "acl": "GetObjectAcl",
        "attributes": "GetObjectAttributes",
    },
    "PUT": {"tagging": "PutObjectTagging", "acl": "PutObjectAcl"},
    "POST": {"uploads": "CreateMultipartUpload", "uploadId": "CompleteMultipartUpload"},
    "DELETE": {"uploadId": "AbortMultipartUpload", "tagging": "DeleteObjectTagging"},
}
#: Object-level sub-resources that are not a plain Get/Put/DeleteObject.
_OBJECT_OTHER = frozenset(
    {"acl", "attributes", "legal-hold", "restore", "retention", "select", "tagging", "torrent"}
)
_BUCKET_GET = {
    "uploads": "ListMultipartUploads",
    "versions": "ListObjectVersions",
    "location": "GetBucketLocation",
}
#: Query parameters of a bucket GET that are list options, not sub-resources.
LIST_PARAMETERS = frozenset(
    {
        "list-type",
        "prefix",
        "delimiter",
        "max-keys",
        "continuation-token",
        "start-after",
        "encoding-type",
        "fetch-owner",
        "marker",
        "x-id",
        "optional-object-attributes",
        "key-marker",
        "upload-id-marker",
        "version-id-marker",
        "max-uploads",
    }
)
#: Bucket sub-resources S3 knows (a GET of the bucket with one of them is not a listing). A
#: GET with other parameters only is a listing: S3 ignores list parameters it does not know
#: (RGW's ``allow-unordered``), so they must not turn the listing into a forwarded call that
#: misses the batched keys.
BUCKET_SUBRESOURCES = frozenset(
    {
        "accelerate",
        "acl",
        "analytics",
        "cors",
        "encryption",
        "intelligent-tiering",
        "inventory",
        "lifecycle",
        "logging",
        "metadataConfiguration",
        "metadataTable",
        "metrics",
        "notification",
        "object-lock",
        "ownershipControls",
        "policy",
        "policyStatus",
        "publicAccessBlock",
        "replication",
        "requestPayment",
        "session",
        "tagging",
        "versioning",
        "website",
    }
)
#: Query parameters that only carry authentication (presigned URLs) or SDK hints.
AUTH_PARAMETERS = frozenset(
    {
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
        "X-Amz-Content-Sha256",
        "AWSAccessKeyId",
        "Signature",
        "Expires",
        "x-id",
    }
)


def operation_of(method: str, target: Target, headers: dict[str, str]) -> str:
    """The S3 operation name of a request (``PutObject``, ``ListObjectsV2``, ...)."""
    query = target.query
    if not target.bucket:
        return "ListBuckets"
    if not target.key:
        return _bucket_operation(method, query)
    if not query:  # most requests: no sub-resource to look for
        if method == "PUT":
            return "CopyObject" if "x-amz-copy-source" in headers else "PutObject"
        return _PLAIN_OBJECT.get(method) or f"{_verb(method)}ObjectSubresource"
    if method == "PUT" and "partNumber" in query and "uploadId" in query:
        return "UploadPartCopy" if "x-amz-copy-source" in headers else "UploadPart"
    for parameter, name in _OBJECT_SUBRESOURCES.get(method, {}).items():
        if parameter in query:
            return name
    if any(parameter in query for parameter in _OBJECT_OTHER):
        return f"{_verb(method)}ObjectSubresource"
    if method == "PUT":
        return "CopyObject" if "x-amz-copy-source" in headers else "PutObject"
    return _PLAIN_OBJECT.get(method) or f"{_verb(method)}ObjectSubresource"


_PLAIN_OBJECT = {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}


def _bucket_operation(method: str, query: dict[str, str]) -> str:
    others = [name for name in query if name not in LIST_PARAMETERS | AUTH_PARAMETERS]
    if method == "GET":
        for parameter, name in _BUCKET_GET.items():
            if parameter in query:
                return name
        if BUCKET_SUBRESOURCES.intersection(others):
            return "GetBucketSubresource"
        return "ListObjectsV2" if query.get("list-type") == "2" else "ListObjects"
    if method == "POST" and "delete" in query:
        return "DeleteObjects"
    if others:
        return f"{_verb(method)}BucketSubresource"
    return {"HEAD": "HeadBucket", "PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(
        method, f"{_verb(method)}BucketSubresource"
    )


def _verb(method: str) -> str:
    # Other methods (OPTIONS, PATCH...) get names of their own, so that allowing a Get*
    # operation in ``passthrough`` never lets them through.
    return method.capitalize()
