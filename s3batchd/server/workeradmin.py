"""The admin port of a daemon with several workers: ``/metrics`` gives every worker's samples,
labelled ``worker``, and ``/readyz`` is ready only when every worker is.

The workers share the admin port, so a scrape reaches one of them. Each worker also listens on
a private loopback port of its own (bound by the supervisor before it forks, so a worker
started again gets the same one); the worker that took the scrape asks every other worker for
its own samples there (``/metrics?scope=worker``) and answers with all of them, each sample
labelled with its worker's index. Counters then never go back in time between scrapes
(Prometheus would read that as a reset), and ``sum`` over ``worker`` gives the daemon's totals.
A worker that does not answer within ``PEER_TIMEOUT_S`` (it is being started again) is left
out of that scrape. ``/readyz`` asks every other worker the same way (``/readyz?scope=worker``)
and lists their reasons and warnings, each named after its worker; one that does not answer
is a reason too (its share of the connections is not being served).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

#: Seconds to wait for another worker's answer.
PEER_TIMEOUT_S = 2.0
#: ``?scope=`` value that asks a worker about itself only.
WORKER_SCOPE = "worker"


@dataclass(frozen=True)
class Peers:
    """This worker's index and every worker's private admin URL, by index."""

    index: int
    urls: tuple[str, ...]

    @property
    def own_port(self) -> int:
        """The port of this worker's private admin listener."""
        port = urlsplit(self.urls[self.index]).port
        if port is None:
            raise ValueError(f"no port in {self.urls[self.index]}")
        return port


async def all_workers_metrics(peers: Peers, own: bytes) -> bytes:
    """The exposition of every worker that answered, ``own`` being this worker's."""
    texts = {peers.index: own.decode()}
    for index, answer in await _ask_others(peers, "/metrics"):
        if isinstance(answer, BaseException):
            logger.warning("worker %d did not give its metrics: %s", index, answer)
        else:
            texts[index] = answer.text
    return merge(texts)


async def all_workers_ready(
    peers: Peers, own: list[str], own_warnings: list[str]
) -> tuple[list[str], list[str]]:
    """Why the daemon is not ready and its warnings, ``own`` and ``own_warnings`` being this
    worker's: every worker's, each prefixed with its worker (no reasons: every worker is
    ready). A worker that does not answer is a reason."""
    reasons = {peers.index: own}
    warnings = {peers.index: own_warnings}
    for index, answer in await _ask_others(peers, "/readyz", also_ok=503):
        reasons[index] = _listed(answer, "reasons")
        warnings[index] = [] if isinstance(answer, BaseException) else _listed(answer, "warnings")
    return _by_worker(reasons), _by_worker(warnings)


def _by_worker(found: dict[int, list[str]]) -> list[str]:
    return [f"worker {i}: {line}" for i, lines in sorted(found.items()) for line in lines]


def _listed(answer: httpx.Response | BaseException, key: str) -> list[str]:
    """A worker's ``/readyz?scope=worker`` ``reasons`` or ``warnings`` (its answer is 200 or
    503 with JSON); without an answer, the reason why."""
    if isinstance(answer, BaseException):
        return [_no_answer(answer)]
    try:
        listed = answer.json().get(key, [])
    except (ValueError, AttributeError) as exc:  # not the JSON object a worker answers
        return [_no_answer(exc)] if key == "reasons" else []
    return [str(line) for line in listed] if isinstance(listed, list) else [str(listed)]


def _no_answer(problem: BaseException) -> str:
    return f"no readiness answer: {str(problem) or type(problem).__name__}"


async def _ask_others(
    peers: Peers,
    path: str,
    *,
    method: str = "GET",
    body: dict[str, object] | None = None,
    also_ok: int | None = 200,
) -> list[tuple[int, httpx.Response | BaseException]]:
    """Every other worker's answer to ``method path?scope=worker`` (with ``body`` as JSON), or
    why there is none: an error status other than ``also_ok`` (None: any status is an
    answer), a refused connection, no answer within the timeout."""
    others = [(i, url) for i, url in enumerate(peers.urls) if i != peers.index]

    async def ask(client: httpx.AsyncClient, url: str) -> httpx.Response:
        answer = await client.request(
            method, f"{url}{path}", params={"scope": WORKER_SCOPE}, json=body
        )
        if also_ok is not None and answer.status_code not in (200, also_ok):
            answer.raise_for_status()
        return answer

    async with httpx.AsyncClient(timeout=PEER_TIMEOUT_S, trust_env=False) as client:
        answers = await asyncio.gather(
            *(ask(client, url) for _, url in others), return_exceptions=True
        )
    return [(index, answer) for (index, _), answer in zip(others, answers, strict=True)]


async def ask_others(
    peers: Peers, method: str, path: str, body: dict[str, object] | None = None
) -> list[object]:
    """Every other worker's JSON answer to ``method path?scope=worker`` (with ``body`` as
    JSON), whatever its status; a worker that does not answer is logged and left out."""
    found: list[object] = []
    for index, answer in await _ask_others(peers, path, method=method, body=body, also_ok=None):
        try:
            if isinstance(answer, BaseException):
                raise answer
            found.append(answer.json())
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning("worker %d did not answer %s %s: %s", index, method, path, exc)
    return found


def merge(texts: dict[int, str]) -> bytes:
    """One exposition of several workers' samples, each labelled ``worker="<index>"``."""
    families: dict[str, Metric] = {}
    for index, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            for sample in family.samples:
                labels = {**sample.labels, "worker": str(index)}
                merged.add_sample(sample.name, labels, sample.value, sample.timestamp)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families.values()))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
