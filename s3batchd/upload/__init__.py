"""Everything that talks to the upstream bucket for the pipeline: the boto3 client, uploads of
sealed batches (in threads or a child process), the probe, bucket modes, credentials.
"""
