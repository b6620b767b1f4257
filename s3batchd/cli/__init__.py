"""The command line: ``s3batchd serve``, ``dev``, ``check-config`` and the client-side and operator
commands (top layer: may import every other package).
"""
