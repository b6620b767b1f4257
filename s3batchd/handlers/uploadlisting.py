"""ListParts and ListMultipartUploads: the uploads the daemon holds answered here, the
bucket's with the upload ids the client knows (the daemon's, for uploads it moved there).
"""

from __future__ import annotations

from xml.etree import ElementTree
from xml.sax.saxutils import escape

from starlette.responses import Response

from s3batchd.errors import InvalidArgument
from s3batchd.forward.passthrough import Call, forward, send_upstream
from s3batchd.forward.proxy import read_all
from s3batchd.handlers.heldupload import S3_NS, open_upload, upload_store, xml_response
from s3batchd.index import iso_time
from s3batchd.s3.xml import local_name, parse

__all__ = ["list_multipart_uploads", "list_parts"]


async def list_parts(call: Call) -> Response:
    """ListParts."""
    upload = open_upload(call)
    if upload is None:
        return await forward(call)
    if upload.upstream_id:
        call.allow()
        answer = await send_upstream(call, query=call.query(uploadId=upload.upstream_id))
        data = await read_all(answer)
        data = data.replace(upload.upstream_id.encode(), upload.upload_id.encode())
        return Response(data, status_code=answer.status_code, media_type="application/xml")
    query = call.target.query
    try:
        marker = int(query.get("part-number-marker", "0") or 0)
        max_parts = min(int(query.get("max-parts", "1000") or 1000), 1000)
    except ValueError as exc:
        raise InvalidArgument("part-number-marker and max-parts must be integers.") from exc
    numbers = [n for n in sorted(upload.parts) if n > marker]
    page, truncated = numbers[:max_parts], len(numbers) > max_parts
    items = []
    for number in page:
        part = upload.parts[number]
        checksum = ""
        if part.checksum:
            name = "Checksum" + upload.checksum_algorithm.upper()
            checksum = f"<{name}>{part.checksum}</{name}>"
        items.append(
            f"<Part><PartNumber>{number}</PartNumber><LastModified>{iso_time(part.mtime)}"
            f'</LastModified><ETag>"{part.md5_hex}"</ETag><Size>{part.size}</Size>'
            f"{checksum}</Part>"
        )
    next_marker = page[-1] if page else marker
    return xml_response(
        f'<ListPartsResult xmlns="{S3_NS}"><Bucket>{escape(upload.bucket)}</Bucket>'
        f"<Key>{escape(upload.key)}</Key><UploadId>{upload.upload_id}</UploadId>"
        f"<PartNumberMarker>{marker}</PartNumberMarker>"
        f"<NextPartNumberMarker>{next_marker}</NextPartNumberMarker>"
        f"<MaxParts>{max_parts}</MaxParts>"
        f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
        f"<StorageClass>STANDARD</StorageClass>{''.join(items)}</ListPartsResult>"
    )


async def list_multipart_uploads(call: Call) -> Response:
    """ListMultipartUploads: the bucket's uploads with the daemon's ids, plus the uploads the
    daemon holds."""
    store = upload_store(call)
    held = store.in_bucket(call.target.bucket)
    if not held:
        return await forward(call)
    query = call.target.query
    prefix = query.get("prefix", "")
    moved = {u.upstream_id: u.upload_id for u in held if u.upstream_id}
    first_page = not (query.get("key-marker") or query.get("upload-id-marker"))
    entries: list[tuple[str, float, str]] = [
        (u.key, u.initiated, _upload_xml(u.key, u.upload_id, iso_time(u.initiated)))
        for u in held
        if first_page and not u.upstream_id and u.key.startswith(prefix)
    ]
    paging = "<IsTruncated>false</IsTruncated>"
    prefixes = ""
    if call.settings.passthrough.allows(call.operation):
        theirs = {daemon_id: upstream_id for upstream_id, daemon_id in moved.items()}
        marker = query.get("upload-id-marker", "")
        answer = await send_upstream(
            call,
            query=call.query(**{"upload-id-marker": theirs[marker]}) if marker in theirs else None,
        )
        data = await read_all(answer)
        if answer.status_code != 200:
            return Response(data, status_code=answer.status_code, media_type="application/xml")
        root = parse(data, "The bucket's upload listing could not be parsed.")
        entries.extend(_their_uploads(root, moved))
        paging, prefixes = _their_paging(root, moved)
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    return xml_response(
        f'<ListMultipartUploadsResult xmlns="{S3_NS}"><Bucket>{escape(call.target.bucket)}'
        f"</Bucket><KeyMarker>{escape(query.get('key-marker', ''))}</KeyMarker>"
        f"<UploadIdMarker>{escape(query.get('upload-id-marker', ''))}</UploadIdMarker>"
        f"<Prefix>{escape(prefix)}</Prefix><MaxUploads>{escape(query.get('max-uploads', '1000'))}"
        f"</MaxUploads>{paging}{''.join(e[2] for e in entries)}{prefixes}"
        "</ListMultipartUploadsResult>"
    )


def _their_paging(root: ElementTree.Element, moved: dict[str, str]) -> tuple[str, str]:
    """The bucket's truncation and next markers (upload ids as the client knows them), and
    its common prefixes, as XML."""
    fields = {local_name(node.tag): node.text or "" for node in root if len(node) == 0}
    paging = f"<IsTruncated>{escape(fields.get('IsTruncated', 'false'))}</IsTruncated>"
    if fields.get("NextKeyMarker"):
        paging += f"<NextKeyMarker>{escape(fields['NextKeyMarker'])}</NextKeyMarker>"
    if fields.get("NextUploadIdMarker"):
        marker = moved.get(fields["NextUploadIdMarker"], fields["NextUploadIdMarker"])
        paging += f"<NextUploadIdMarker>{escape(marker)}</NextUploadIdMarker>"
    prefixes = "".join(
        f"<CommonPrefixes><Prefix>{escape(child.text or '')}</Prefix></CommonPrefixes>"
        for node in root
        if local_name(node.tag) == "CommonPrefixes"
        for child in node
        if local_name(child.tag) == "Prefix"
    )
    return paging, prefixes


def _upload_xml(key: str, upload_id: str, initiated: str) -> str:
    return (
        f"<Upload><Key>{escape(key)}</Key><UploadId>{escape(upload_id)}</UploadId>"
        f"<StorageClass>STANDARD</StorageClass><Initiated>{initiated}</Initiated></Upload>"
    )


def _their_uploads(
    root: ElementTree.Element, moved: dict[str, str]
) -> list[tuple[str, float, str]]:
    found = []
    for node in root:
        if local_name(node.tag) != "Upload":
            continue
        fields = {local_name(child.tag): child.text or "" for child in node}
        upload_id = moved.get(fields.get("UploadId", ""), fields.get("UploadId", ""))
        initiated = fields.get("Initiated", "")
        found.append(
            (fields.get("Key", ""), 0.0, _upload_xml(fields.get("Key", ""), upload_id, initiated))
        )
    return found
