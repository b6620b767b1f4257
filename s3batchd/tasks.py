"""Background tasks of the event loop that run until they are cancelled (a follow loop, a
probe, a monitor): one done-callback says when one ended on its own, with its traceback, in the
logger of the component that started it, and tells the component (``on_death``) so that it can
show it in ``/readyz`` or its metrics. Cancellation and a clean return are not deaths.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any


def log_death(
    logger: logging.Logger,
    message: str,
    *,
    on_death: Callable[[BaseException], object] | None = None,
) -> Callable[[asyncio.Task[Any]], None]:
    """A done-callback for a background task: an exception that ended it is logged as
    ``message`` (an error, with the traceback) and given to ``on_death``."""

    def done(task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        logger.error(message, exc_info=exc)
        if on_death is not None:
            on_death(exc)

    return done
