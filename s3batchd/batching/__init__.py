"""The write pipeline: the batcher (one open batch per bucket), the pipeline that starts recovery,
batcher, uploader and catalog writer together, and where an object's bytes are read from.
"""
