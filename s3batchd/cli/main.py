"""Command line: ``s3batchd serve``, ``s3batchd check-config`` and ``s3batchd dev``."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from s3batchd import __version__
from s3batchd.allocator import limit_arenas
from s3batchd.cli.catalog import catalog_group, get_command, reindex_command
from s3batchd.cli.compact import compact_command
from s3batchd.cli.devenv import DevEnvironment, write_config, write_env
from s3batchd.cli.options import config_option
from s3batchd.cli.parked import parked
from s3batchd.cli.preflight import check_storage
from s3batchd.cli.read import extract, ls
from s3batchd.cli.status import fetch as fetch_status
from s3batchd.cli.status import is_ready
from s3batchd.cli.status import render as render_status
from s3batchd.config import Settings, is_loopback, load_settings, unknown_variables
from s3batchd.errors import ConfigError, S3BatchdError, StartupError
from s3batchd.logs import setup_logging
from s3batchd.server.app import state_of
from s3batchd.server.serve import bind_sockets, build_server
from s3batchd.server.workeradmin import Peers
from s3batchd.server.workers import adopt_orphans, run_workers
from s3batchd.upload.upstream import make_client, probe

if TYPE_CHECKING:
    from starlette.applications import Starlette

logger = logging.getLogger(__name__)

#: Exit status when the daemon did not start: a port taken, the spool or the catalog unusable.
EXIT_START_FAILED = 1
#: Exit status of a refused configuration (file missing or malformed, a value invalid, an
#: unknown key) or command line; also of ``check-config`` when the upstream test fails.
EXIT_CONFIG = 2
#: Exit status of ``status`` when the daemon is not ready or does not answer.
EXIT_NOT_READY = 1
#: Exit status when shutdown left sealed batches in the spool (uploaded at the next start).
#: Only that: the systemd unit counts it as success, so a failed start must never return it.
EXIT_BATCHES_KEPT = 3

_CONFIG_OPTION = config_option(
    "TOML settings file (env: S3BATCHD_CONFIG). S3BATCHD_<SECTION>__<KEY> overrides it."
)


@click.group()
@click.version_option(__version__, prog_name="s3batchd")
def main() -> None:
    """s3batchd: batch small S3 PutObjects into tar files with a JSON index."""


class ConfigRefused(click.ClickException):
    """A configuration the daemon will not run with: one line on stderr, exit status 2."""

    exit_code = EXIT_CONFIG


def _load(config_path: Path | None) -> Settings:
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        raise ConfigRefused(str(exc)) from exc
    _refuse_exposure(settings)
    return settings


def _refuse_exposure(settings: Settings) -> None:
    if not is_loopback(settings.server.host) and settings.auth.mode == "none":
        raise ConfigRefused(
            f"refusing to listen on {settings.server.host}: without authentication s3batchd "
            "accepts anyone's writes, so it only listens on loopback (127.0.0.1, ::1, localhost) "
            'unless auth.mode = "sigv4"'
        )


@main.command()
@_CONFIG_OPTION
def serve(config_path: Path | None) -> None:
    """Run the daemon until SIGTERM or SIGINT, then seal and upload open batches."""
    settings = _load(config_path)
    setup_logging(settings.log)
    _warn_unknown_variables()
    sys.exit(run(settings))


def _warn_unknown_variables() -> None:
    # A warning, not a refusal: other software sets S3BATCHD_* too (Kubernetes service links
    # of a Service named s3batchd: S3BATCHD_SERVICE_HOST, S3BATCHD_PORT, ...).
    for message in unknown_variables():
        logger.warning("environment: %s; ignored", message)


@main.command("check-config")
@_CONFIG_OPTION
@click.option(
    "--bucket",
    "buckets",
    multiple=True,
    help="Bucket to test the upstream connection with (default: upstream.probe_buckets).",
)
@click.option("--offline", is_flag=True, help="Only validate; do not contact the upstream.")
def check_config(config_path: Path | None, buckets: tuple[str, ...], offline: bool) -> None:
    """Validate the settings, print them, and test the upstream connection and credentials."""
    settings = _load(config_path)
    unknown = unknown_variables()
    if unknown:  # check-config is where a typo should stop a deployment
        raise ConfigRefused("environment: " + "; ".join(unknown))
    click.echo(settings.model_dump_json(indent=2))
    if offline:
        return
    targets = buckets or settings.upstream.probe_buckets
    if not targets:
        click.echo("upstream: not tested (pass --bucket or set upstream.probe_buckets)", err=True)
        return
    client = make_client(settings.upstream, settings.upload)
    problems = [p for p in (probe(client, b, settings.upstream.prefix) for b in targets) if p]
    for problem in problems:
        click.echo(f"upstream: {problem}", err=True)
    if problems:
        sys.exit(EXIT_CONFIG)
    click.echo(f"upstream: ok ({', '.join(targets)})", err=True)


@main.command()
@_CONFIG_OPTION
@click.option("--url", help="Admin URL of the daemon (default: from server.admin_host/port).")
def status(config_path: Path | None, url: str | None) -> None:
    """Print a summary of a running daemon: readiness, spool, batches, uploads, savings. Exit
    status 0 when it is ready, 1 when it is not or does not answer."""
    settings = _load(config_path)
    host = settings.server.admin_host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    base = url or f"http://{host}:{settings.server.admin_port}"
    try:
        ready, samples = fetch_status(base)
    except OSError as exc:
        raise click.ClickException(f"no daemon answering at {base}: {exc}") from exc
    click.echo(render_status(ready, samples))
    sys.exit(0 if is_ready(ready) else EXIT_NOT_READY)


def run(settings: Settings) -> int:
    """Serve until a signal; the exit status says whether every batch was uploaded. With
    ``server.workers`` > 1 the sockets are bound here and shared by forked workers."""
    limit_arenas()  # before the threads start; forked workers inherit it
    try:
        check_storage(settings)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from exc  # exit status 1 (EXIT_START_FAILED)
    try:
        sockets = bind_sockets(settings)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {exc.strerror}") from exc
    try:
        moved = adopt_orphans(settings.spool.dir, settings.server.workers, settings.upstream.prefix)
    except (OSError, S3BatchdError) as exc:
        for sock in sockets:
            sock.close()
        raise click.ClickException(f"cannot prepare the worker spools: {exc}") from exc
    if moved:
        logger.info("%d batches of former workers adopted", moved)
    if settings.server.workers == 1:
        return serve_on(settings, sockets, (), None)
    try:
        return run_workers(settings, sockets, serve_on)
    finally:
        for sock in sockets:
            sock.close()


def serve_on(
    settings: Settings,
    sockets: list[socket.socket],
    spools: tuple[Path, ...],
    peers: Peers | None,
) -> int:
    """Run one daemon process on bound ``sockets`` until a signal (``spools``, ``peers``: the
    workers', when there are several)."""
    server, sockets, app = build_server(settings, sockets, spools=spools, peers=peers)
    # uvicorn re-raises the signal that stopped it once it is done; with these handlers
    # that is a no-op, so the exit status below can say whether every batch was uploaded.
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    try:
        server.run(sockets=sockets)
    except SystemExit:  # uvicorn's own status 3 when the lifespan startup failed
        return _start_failed(app)
    finally:
        for sock in sockets:
            sock.close()
    if not server.started:
        return _start_failed(app)
    pipeline = state_of(app).pipeline
    if pipeline is not None and pipeline.drained is False:
        return EXIT_BATCHES_KEPT
    return 0


def _start_failed(app: Starlette) -> int:
    """Exit status 1; a ``StartupError`` raised in the lifespan (the pipeline's start) printed
    as the one line a pre-flight failure is (server.DrainingServer kept uvicorn quiet)."""
    error = state_of(app).startup_error
    if error is not None:
        click.echo(f"Error: {error}", err=True)
    return EXIT_START_FAILED


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path(".local"),
    show_default=True,
    help="Where SeaweedFS data and the spool live.",
)
@click.option("--port", type=int, default=9000, show_default=True, help="Daemon port.")
@click.option("--bucket", default="demo", show_default=True, help="Bucket created at start.")
def dev(data_dir: Path, port: int, bucket: str) -> None:
    """Run a local SeaweedFS and the daemon in front of it (what `make run` does).

    Writes DATA_DIR/config.toml (the daemon's settings) and DATA_DIR/env.sh (endpoints,
    credentials, S3BATCHD_CONFIG and PATH for a second shell) at every start."""
    from s3batchd.cli.seaweed import start_local_s3

    s3 = start_local_s3(data_dir / "seaweedfs", buckets=(bucket,))
    os.environ["AWS_ACCESS_KEY_ID"] = s3.access_key
    os.environ["AWS_SECRET_ACCESS_KEY"] = s3.secret_key
    try:
        config = write_config(data_dir, port=port, upstream_url=s3.endpoint_url)
        settings = _load(config)  # the environment's S3BATCHD_* still win, as for serve
        daemon_url = f"http://127.0.0.1:{settings.server.port}"
        env = DevEnvironment(
            daemon_url=daemon_url,
            upstream_url=s3.endpoint_url,
            access_key=s3.access_key,
            secret_key=s3.secret_key,
            config=config,
            bin_dir=Path(sys.executable).parent,
        )
        env_file = write_env(data_dir, env)
        setup_logging(settings.log)
        _warn_unknown_variables()
        click.echo(_dev_banner(env, bucket, env_file))
        status = run(settings)
    finally:
        s3.stop()
    sys.exit(status)


def _dev_banner(env: DevEnvironment, bucket: str, env_file: Path) -> str:
    return f"""
s3batchd listening on {env.daemon_url}
  in front of a local SeaweedFS S3 at {env.upstream_url} (bucket '{bucket}',
  access key {env.access_key!r}, secret key {env.secret_key!r})

In another shell, from this directory:
    source {env_file}
    aws s3 cp README.md s3://{bucket}/readme.txt    # through the daemon
    aws s3 ls s3://{bucket}/                        # read-your-writes
    s3batchd get s3://{bucket}/readme.txt | head -3 # through the catalog
    aws --endpoint-url "$UPSTREAM_URL" s3 ls --recursive s3://{bucket}/
                                                    # the batches, after batch.linger_ms

Ctrl-C stops both.
"""


main.add_command(get_command)
main.add_command(reindex_command)
main.add_command(catalog_group)
main.add_command(ls)
main.add_command(extract)
main.add_command(parked)
main.add_command(compact_command)
