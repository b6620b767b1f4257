"""The way to the bucket for what the daemon does not batch: the re-signing proxy, passthrough
rules and body re-framing, the HeadBucket gate.
"""
