"""The local disk: tar spool files and their members, group commit, parked batches, client
multipart uploads kept until they complete.
"""
