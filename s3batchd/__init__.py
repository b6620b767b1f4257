"""s3batchd: an S3 PutObject sidecar that batches small objects into tar files."""

__version__ = "0.1.0"
