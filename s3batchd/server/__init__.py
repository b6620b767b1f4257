"""Running the daemon: uvicorn and its protocol, the S3 and admin listeners, workers, metrics
(imports handlers and below).
"""
