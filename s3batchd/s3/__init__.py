"""The S3 wire: addressing, header rules, body decoding and verification, signatures, checksums,
XML, operation names. No I/O beyond reading the request body.
"""
