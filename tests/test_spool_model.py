"""A model of the spool under crashes (hypothesis state machine).

Writes that were not fdatasync'ed may be lost at a crash: the file may end anywhere after the
last synced position, and the unsynced region may hold zeros or garbage (torn pages). Whatever
happens, recovery must give back every synced record, and never a record that is not intact.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from s3batchd.constants import MB
from s3batchd.index import WriterId, new_batch_id
from s3batchd.records import ObjectRecord
from s3batchd.s3.body import BodyBuffer
from s3batchd.spool.files import SpoolFile, recover, scan

BUCKET = "model"
WRITER = WriterId.generate("model")


class SpoolUnderCrashes(RuleBasedStateMachine):
    """Append, sync and crash a spool; recovery must keep exactly what the model allows."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="spool-model-"))
        self.seq = 0
        self.synced: list[str] = []
        """Keys of records made durable, in order, across all batches so far."""
        self.unsynced: list[str] = []
        self.recovered: list[str] = []
        self.spool = self._new_spool()
        self.synced_position = 0

    def _new_spool(self) -> SpoolFile:
        self.seq += 1
        return SpoolFile.create(
            self.root / BUCKET,
            bucket=BUCKET,
            batch_id=new_batch_id(WRITER, self.seq),
            prefix="p/",
        )

    @rule(size=st.sampled_from([0, 1, 100, 511, 512, 513, 2000]), meta=st.booleans())
    def append(self, size: int, meta: bool) -> None:
        key = f"k/{len(self.synced) + len(self.unsynced) + len(self.recovered)}-{self.seq}"
        data = hashlib.sha256(key.encode()).digest() * (size // 32 + 1)
        data = data[:size]
        body = BodyBuffer(memory_limit=MB, spill_dir=self.root / "_tmp")
        body.write(data)
        record = ObjectRecord(
            key=key,
            size=size,
            md5_hex=hashlib.md5(data).hexdigest(),
            metadata={"m": "x" * 300} if meta else {},
        )
        self.spool.append(record, body)
        body.close()
        self.unsynced.append(key)

    @rule()
    def sync(self) -> None:
        self.spool.sync()
        self.synced_position = self.spool.position
        self.synced.extend(self.unsynced)
        self.unsynced.clear()

    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        path = self.spool.path
        written = self.spool.position
        self.spool.close()
        cut = data.draw(st.integers(self.synced_position, written), label="file ends at")
        tail = data.draw(st.sampled_from(["clean", "zeros", "garbage"]), label="unsynced tail")
        with path.open("r+b") as raw:
            raw.truncate(cut)
            if tail != "clean" and cut > self.synced_position:
                start = data.draw(st.integers(self.synced_position, cut - 1), label="torn from")
                raw.seek(start)
                filler = bytes(cut - start) if tail == "zeros" else os.urandom(cut - start)
                raw.write(filler)
        batches = recover(self.root, prefix="p/")
        got = [e.record.key for b in batches for e in scan(b.path, verify=True).entries]
        # Every synced record of this batch is back, followed by some prefix of the
        # unsynced ones, each intact (scan verified its MD5).
        batch_synced = [k for k in self.synced if k.endswith(f"-{self.seq}")]
        assert got[: len(batch_synced)] == batch_synced
        assert got[len(batch_synced) :] == self.unsynced[: len(got) - len(batch_synced)]
        for batch in batches:
            batch.path.unlink()
        self.recovered.extend(got)
        self.synced = [k for k in self.synced if not k.endswith(f"-{self.seq}")]
        self.unsynced.clear()
        self.synced_position = 0
        self.spool = self._new_spool()

    @invariant()
    def position_is_block_aligned(self) -> None:
        assert self.spool.position % 512 == 0

    def teardown(self) -> None:
        self.spool.close()
        shutil.rmtree(self.root, ignore_errors=True)


TestSpoolUnderCrashes = SpoolUnderCrashes.TestCase
TestSpoolUnderCrashes.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
