"""tasks.log_death: a background task that ends with an exception is logged and told to its
component; a cancelled one or one that returned is not."""

from __future__ import annotations

import asyncio
import logging

import pytest

from s3batchd.tasks import log_death


def test_a_death_is_logged_and_told_cancellation_and_return_are_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    deaths: list[BaseException] = []
    logger = logging.getLogger("s3batchd.test.tasks")

    async def fails() -> None:
        raise RuntimeError("boom")

    async def returns() -> None:
        return None

    async def main() -> None:
        for work in (fails(), returns(), asyncio.sleep(60)):
            task = asyncio.ensure_future(work)
            task.add_done_callback(log_death(logger, "worker stopped", on_death=deaths.append))
            await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.sleep(0)  # the done-callbacks run

    with caplog.at_level(logging.ERROR, logger="s3batchd.test.tasks"):
        asyncio.run(main())
    assert [str(exc) for exc in deaths] == ["boom"]
    records = [r for r in caplog.records if r.name == "s3batchd.test.tasks"]
    assert [r.getMessage() for r in records] == ["worker stopped"]
    assert records[0].exc_info is not None
