"""Few malloc arenas, so the daemon's memory does not grow with its peak number of threads.

glibc's malloc gives a thread that allocates while no arena is free an arena of its own, up to
eight per core, and each arena keeps about what its busiest moment needed. The daemon's threads
come and go (a multipart upload runs its parts on threads of its own), so the number of arenas
follows the most threads ever alive at once: in a sustained run at full load it rose from 12 to
15 when two batches uploaded at the same time, and RSS by 14 MiB with it, in steps at moments
nobody chose (bench/README.md). Python threads allocate holding the GIL, so they gain little
from arenas of their own.

At start the daemon asks for ``ARENAS`` arenas (``mallopt(M_ARENA_MAX)``; its forked workers
inherit it), and the upload processes it starts get ``MALLOC_ARENA_MAX`` (``child_env``). An
operator's ``MALLOC_ARENA_MAX``, or ``glibc.malloc.arena_max`` in ``GLIBC_TUNABLES``, is left
alone. With a C library other than glibc nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: Arenas per process: the main one and one that all other threads share.
ARENAS = 2
#: glibc's variable for it, read when a process starts.
ARENA_ENV = "MALLOC_ARENA_MAX"
#: ``mallopt`` parameter number of the arena limit (glibc's malloc.h).
_M_ARENA_MAX = -8


def operator_chose() -> bool:
    """Whether the environment already sets the arena limit."""
    return ARENA_ENV in os.environ or "glibc.malloc.arena_max" in os.environ.get(
        "GLIBC_TUNABLES", ""
    )


def child_env() -> dict[str, str]:
    """What to add to the environment of a process the daemon starts."""
    return {} if operator_chose() else {ARENA_ENV: str(ARENAS)}


def limit_arenas() -> bool:
    """Limit this process (and the processes it forks) to ``ARENAS`` arenas, unless the
    environment chose already; True if the limit was set here. Call it before threads start
    allocating."""
    if operator_chose() or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:  # a C library without it
        return False
    return bool(mallopt(_M_ARENA_MAX, ARENAS) == 1)  # musl's is a stub answering 0
