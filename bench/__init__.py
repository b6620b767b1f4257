"""Benchmarks of s3batchd (issue #8): ``python -m bench.run`` or ``make bench``."""
