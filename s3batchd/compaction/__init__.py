"""Compaction: batches whose objects were mostly deleted or overwritten are rewritten without
the dead bytes (docs/compaction.md, issue 25). ``survey`` decides from the bucket's indexes
alone (so a pass needs no daemon), ``rewrite`` writes the new batch, ``lease`` keeps two
compactors of a bucket apart, and ``compactor`` runs one pass."""
