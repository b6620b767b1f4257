"""The command line: config loading, refusal messages, exit statuses."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

from s3batchd.cli.main import main
from s3batchd.cli.seaweed import LocalS3
from s3batchd.cli.status import Samples
from s3batchd.cli.status import render as render_status
from s3batchd.constants import MB
from tests.batches import indexed_objects
from tests.conftest import Daemon, DaemonFactory, wait_for


def run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, env=env)
    return result.exit_code, result.output


def run_split(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, args, env=env)
    return result.exit_code, result.stdout, result.stderr


def test_check_config_reads_file_and_env(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[server]\nport = 9002\n[batch]\nlinger_ms = 50\n[upstream]\nprefix = "p"\n')
    status, output, _ = run_split(
        ["check-config", "--offline"],
        env={"S3BATCHD_CONFIG": str(config), "S3BATCHD_SERVER__PORT": "9001"},
    )
    assert status == 0, output
    settings = json.loads(output)
    assert settings["server"]["port"] == 9001  # the environment wins for its one key
    assert settings["batch"]["linger_ms"] == 50  # the file keeps the others
    assert settings["upstream"]["prefix"] == "p/"


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("[batch]\nlinger = 3\n", "batch.linger"),
        ("[batch]\nlinger_ms = -1\n", "batch.linger_ms"),
        ('[spool]\ndurability = "maybe"\n', "spool.durability"),
        ("[nosuch]\nx = 1\n", "nosuch"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(tmp_path: Path, toml: str, field: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    status, output = run(["serve", "--config", str(config)])
    assert status != 0
    assert field in output


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    status, output = run(["serve", "--config", str(tmp_path / "absent.toml")])
    assert status != 0
    assert "config file not found" in output


def test_non_loopback_without_auth_is_refused() -> None:
    status, output = run(["check-config"], env={"S3BATCHD_SERVER__HOST": "0.0.0.0"})
    assert status != 0
    assert "refusing to listen on 0.0.0.0" in output


def test_check_config_tests_the_upstream(s3_server: LocalS3, bucket: str) -> None:
    env = {
        "S3BATCHD_UPSTREAM__ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    status, _, err = run_split(["check-config", "--bucket", bucket], env=env)
    assert (status, err.strip()) == (0, f"upstream: ok ({bucket})")
    status, _, err = run_split(["check-config", "--bucket", "no-such-bucket-here"], env=env)
    assert status == 2
    assert "NoSuchBucket" in err
    wrong = {**env, "AWS_SECRET_ACCESS_KEY": "wrong"}
    status, _, err = run_split(["check-config", "--bucket", bucket], env=wrong)
    assert status == 2
    assert "SignatureDoesNotMatch" in err


def test_status_summarises_a_running_daemon(daemon: Daemon, s3: S3Client, bucket: str) -> None:
    client = daemon.client()
    for number in range(3):
        client.put_object(Bucket=bucket, Key=f"s/{number}", Body=b"status")
    wait_for(lambda: indexed_objects(s3, bucket) == 3)
    wait_for(lambda: daemon.pipeline.uploader.stats.batches == 1)
    status, output = run(["status", "--url", daemon.admin_url])
    assert status == 0, output
    assert "state:     ready" in output
    assert "uploaded 1 with 3 objects" in output
    assert "PUT requests avoided" in output


def test_status_of_several_workers_adds_their_samples_up() -> None:
    samples: Samples = {
        "s3batchd_batches_sealed_total": {
            (("reason", "linger"), ("worker", "0")): 3.0,
            (("reason", "linger"), ("worker", "1")): 4.0,
            (("reason", "records"), ("worker", "1")): 1.0,
        },
        "s3batchd_spool_oldest_record_age_seconds": {
            (("worker", "0"),): 1.5,
            (("worker", "1"),): 2.5,
        },
        "s3batchd_records_uploaded_total": {(("worker", "0"),): 10.0, (("worker", "1"),): 5.0},
        "s3batchd_batches_uploaded_total": {(("worker", "0"),): 2.0, (("worker", "1"),): 1.0},
    }
    output = render_status({"status": "ready"}, samples)
    assert "sealed linger 7, records 1; uploaded 3 with 15 objects" in output
    assert "oldest 2.5 s" in output  # the oldest of the workers', not their sum


def test_status_without_a_daemon_is_a_clear_error() -> None:
    status, output = run(["status", "--url", "http://127.0.0.1:9"])
    assert status == 1
    assert "no daemon answering at http://127.0.0.1:9" in output


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status, output = run(["serve"], env={"S3BATCHD_SERVER__PORT": str(port)})
    assert status == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in output


def test_status_of_a_daemon_that_is_not_ready_exits_1(
    start_daemon: DaemonFactory, bucket: str
) -> None:
    daemon = start_daemon(spool={"max_bytes": MB}, batch={"linger_ms": 600_000})
    # Over 90 % of the spool quota (the object waits in its open batch): not ready for PUTs.
    daemon.client().put_object(Bucket=bucket, Key="big", Body=b"x" * (MB - 64 * 1024))
    status, output = run(["status", "--url", daemon.admin_url])
    assert status == 1, output
    assert "state:     NOT READY: " in output


def test_status_never_shows_negative_savings() -> None:
    # Before a batch of many objects is uploaded, the PUT-class requests spent (tar, index)
    # outnumber the objects uploaded: the metric is negative.
    samples: Samples = {
        "s3batchd_put_requests_avoided": {(): -2.0},
        "s3batchd_estimated_savings_usd": {(): -0.00001},
        "s3batchd_records_uploaded_total": {(): 0.0},
    }
    output = render_status({"status": "ready"}, samples)
    [savings] = [line for line in output.splitlines() if line.startswith("savings:")]
    assert not re.search(r"-\s*\$?\d", savings), savings  # no negative number
    assert "no savings yet" in savings


def test_status_shows_readiness_warnings_and_stays_ready() -> None:
    ready: dict[str, object] = {
        "status": "ready",
        "warnings": ["upstream unreachable: s3://b: timed out"],
    }
    output = render_status(ready, {})
    assert "state:     ready; warnings: upstream unreachable: s3://b: timed out" in output


def test_check_config_refuses_a_variable_that_names_no_setting() -> None:
    status, output = run(["check-config", "--offline"], env={"S3BATCHD_SERVER_PORT": "9001"})
    assert status == 2, output
    assert "S3BATCHD_SERVER_PORT matches no setting (did you mean S3BATCHD_SERVER__PORT?)" in output
