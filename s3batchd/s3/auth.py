"""Who may use the daemon: request signature verification and per-key bucket allowlists."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from starlette.types import Scope

from s3batchd.config import AccessKey, AuthConfig
from s3batchd.errors import AccessDenied
from s3batchd.s3.sigv4 import AuthContext, ChunkVerifier, Credentials, verify_request


class Authenticator:
    """Verifies every request when ``auth.mode = "sigv4"``; lets all through with ``none``."""

    def __init__(self, config: AuthConfig, *, clock: Callable[[], datetime] | None = None) -> None:
        self.enabled = config.mode == "sigv4"
        self._keys: dict[str, AccessKey] = {key.access_key_id: key for key in config.access_keys}
        self.clock = clock or (lambda: datetime.now(tz=UTC))
        """Injectable for tests that replay requests signed at a recorded time."""

    def _lookup(self, access_key_id: str) -> Credentials | None:
        key = self._keys.get(access_key_id)
        if key is None:
            return None
        return Credentials(access_key_id, key.secret_access_key.get_secret_value())

    def verify(self, scope: Scope, bucket: str, key: str, vhost: bool) -> AuthContext | None:
        """Check the request's signature and the key's allowlist (None when auth is off)."""
        if not self.enabled:
            return None
        context = verify_request(
            scope["method"],
            scope.get("raw_path") or scope["path"].encode(),
            scope.get("query_string", b""),
            scope["headers"],
            lookup=self._lookup,
            now=self.clock(),
            vhost_bucket=bucket if vhost else None,
        )
        self._check_allowed(self._keys[context.access_key_id], bucket, key)
        return context

    def check_allowed(self, context: AuthContext | None, bucket: str, key: str) -> None:
        """AccessDenied unless the request's access key may use ``bucket``/``key`` (for keys a
        request names besides its target: a copy source)."""
        if context is not None:
            self._check_allowed(self._keys[context.access_key_id], bucket, key)

    @staticmethod
    def _check_allowed(access_key: AccessKey, bucket: str, key: str) -> None:
        if not access_key.buckets:
            return
        for entry in access_key.buckets:
            allowed_bucket, _, prefix = entry.partition("/")
            if allowed_bucket == bucket and key.startswith(prefix):
                return
        raise AccessDenied(
            f"Access key {access_key.access_key_id} may not use s3://{bucket}/{key}."
        )


def chunk_verifier(context: AuthContext | None) -> ChunkVerifier | None:
    """The verifier of a signed aws-chunked body, when the request is one."""
    if context is None or context.streaming is None:
        return None
    return context.streaming.chunk_verifier()
