"""One module per S3 operation family the daemon answers itself (PutObject, GET/HEAD, listings,
deletes, copies, multipart, sub-resources) and the dispatch between them and forwarding.
"""
