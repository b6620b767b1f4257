"""The local disk: the tar spool files, their members, group commit, parked batches and client
multipart uploads (synchronous, append-only).
"""
