"""The local disk: spool tar files and their members, group commit, parked batches, client
multipart uploads. Synchronous and append-only.
"""
