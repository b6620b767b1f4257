"""The daemon's upstream credentials: the AWS default chain, looked up again while it is empty.

botocore looks the chain up once, when a client is made, and a client made while the chain
found nothing never signs: every upload fails with ``NoCredentialsError`` until a restart.
A pod can start before its credentials exist (an agent writing the shared credentials file,
an instance metadata service not reachable yet), so when the chain is empty at start the
daemon gets ``LateCredentials`` instead: each use looks the chain up again (at most every
``LOOKUP_INTERVAL_S``, one lookup at a time) and fails with ``NoCredentialsYetError`` (a
``NoCredentialsError``) until it finds some; from then on those are used, refreshing
themselves when they are temporary. Credentials found at start are used as botocore found
them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import boto3
import botocore.session
from botocore.credentials import CredentialResolver, Credentials, RefreshableCredentials
from botocore.exceptions import NoCredentialsError

if TYPE_CHECKING:
    from botocore.credentials import ReadOnlyCredentials

logger = logging.getLogger(__name__)

#: Seconds between two lookups of an empty chain (a lookup may ask the instance metadata
#: service, which takes up to about 2 s where it does not answer).
LOOKUP_INTERVAL_S = 5.0


class NoCredentialsYetError(NoCredentialsError):
    """The chain was empty at start and has found nothing since (botocore treats it as its
    own ``NoCredentialsError``: uploads retry it)."""


class LateCredentials(Credentials):
    """Credentials the default chain did not have at start, looked up again when used.

    A ``Credentials`` for botocore, which signs with ``get_frozen_credentials()`` only; the
    plain ``access_key``/``secret_key``/``token`` attributes are not set (reading them fails
    rather than signing with nothing)."""

    def __init__(
        self,
        lookup: Callable[[], Credentials | None],
        *,
        interval_s: float = LOOKUP_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.method = "s3batchd-late"
        self._lookup = lookup
        self._interval_s = interval_s
        self._clock = clock
        self._found: Credentials | None = None
        self._next_lookup = clock()
        self._lock = threading.Lock()

    def get_frozen_credentials(self) -> ReadOnlyCredentials:
        """What botocore's signer asks for: the found credentials' current values;
        ``NoCredentialsYetError`` while none are found."""
        return self._current().get_frozen_credentials()

    def may_block(self) -> bool:
        """Whether ``get_frozen_credentials`` may make a network call now (a lookup of the
        chain, or a refresh of the temporary credentials it found)."""
        found = self._found
        if found is None:
            return self._clock() >= self._next_lookup
        return isinstance(found, RefreshableCredentials) and found.refresh_needed()

    def _current(self) -> Credentials:
        found = self._found
        if found is not None:
            return found
        if not self._lock.acquire(blocking=False):
            raise NoCredentialsYetError()  # another thread is looking them up
        try:
            if self._found is None:
                if self._clock() < self._next_lookup:
                    raise NoCredentialsYetError()
                self._next_lookup = self._clock() + self._interval_s
                found = self._lookup()  # may raise (a malformed file): tried again later
                if found is None:
                    raise NoCredentialsYetError()
                logger.info("upstream credentials found (%s)", found.method)
                self._found = found
            return self._found
        finally:
            self._lock.release()


def chain_credentials() -> Credentials | None:
    """What the AWS default chain finds now (environment, shared files, SSO, container and
    instance roles, web identity), read afresh."""
    found: Credentials | None = botocore.session.get_session().get_credentials()
    return found


def upstream_credentials() -> Credentials:
    """The credentials the daemon signs with: the chain's, or ``LateCredentials`` when it
    found none."""
    found = chain_credentials()
    if found is not None:
        return found
    logger.warning(
        "no upstream credentials found (environment, shared credentials file, container or "
        "instance role); uploads and forwarded requests fail and retry until they appear "
        "(looked up again every %g s)",
        LOOKUP_INTERVAL_S,
    )
    return LateCredentials(chain_credentials)


class _Resolver(CredentialResolver):
    """botocore's ``credential_provider`` component: the given credentials, else
    ``upstream_credentials()``."""

    def __init__(self, credentials: Credentials | None) -> None:
        super().__init__(providers=[])
        self._credentials = credentials

    def load_credentials(self) -> Credentials:
        return self._credentials if self._credentials is not None else upstream_credentials()


def upstream_session(credentials: Credentials | None = None) -> boto3.session.Session:
    """A boto3 session whose clients sign with ``credentials`` (default:
    ``upstream_credentials()``)."""
    core = botocore.session.get_session()
    core.register_component("credential_provider", _Resolver(credentials))
    return boto3.session.Session(botocore_session=core)
