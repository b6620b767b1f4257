"""The catalog: where every key the daemon knows lives (a cache of what the spool and the bucket's
index objects say).
"""
