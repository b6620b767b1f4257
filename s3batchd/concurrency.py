"""The one boundary where blocking calls leave the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


async def run_sync(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking function in the default thread pool (spool I/O)."""
    return await asyncio.to_thread(func, *args, **kwargs)


async def run_in(executor: Executor, func: Callable[[], T]) -> T:
    """Run a blocking function in a dedicated executor (upstream calls)."""
    return await asyncio.get_running_loop().run_in_executor(executor, func)
