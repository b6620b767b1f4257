"""Merging workers' expositions: every sample kept, labelled with its worker, parseable."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from s3batchd.server.metrics import Metrics
from s3batchd.server.workeradmin import Peers, merge


def test_merge_labels_every_sample_with_its_worker() -> None:
    texts: dict[int, str] = {}
    for index, count in ((0, 5), (1, 7)):
        metrics = Metrics(put_price_per_1000_usd=0.005)
        metrics.requests.labels("PutObject", "200").inc(count)
        metrics.ack_latency.observe(0.003 * (index + 1))
        texts[index] = generate_latest(metrics.registry).decode()

    merged = merge(texts).decode()

    samples = [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(merged)
        for sample in family.samples
    ]
    originals = [
        (sample.name, {**sample.labels, "worker": str(index)}, sample.value)
        for index, text in texts.items()
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]
    assert sorted(samples, key=repr) == sorted(originals, key=repr)
    puts = {
        labels["worker"]: value
        for name, labels, value in samples
        if name == "s3batchd_requests_total"
    }
    assert puts == {"0": 5.0, "1": 7.0}
    assert "# TYPE s3batchd_requests_total counter" in merged
    assert "# TYPE s3batchd_ack_latency_seconds histogram" in merged


def test_own_port_is_this_workers() -> None:
    peers = Peers(1, ("http://127.0.0.1:4001", "http://127.0.0.1:4002"))
    assert peers.own_port == 4002
