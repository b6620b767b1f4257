"""The documents work as written: their marked examples, pasted in order after ``make run``.

A fenced block whose info string is ``sh run``, ``python run`` or ``js run`` is an example to
run. The blocks of a document are extracted in order and run in one bash session
(``set -euo pipefail``) in a fresh directory where ``s3batchd dev --data-dir .local`` (what
``make run`` runs) serves; ``python run`` blocks go to ``python`` on that shell's PATH (the
virtual environment's, once ``.local/env.sh`` is sourced), as a reader pasting them into
``python`` would, ``js run`` blocks to ``node`` as an ES module (the shell's exported
variables in ``process.env``; they must paste into ``node``'s prompt as well,
``node_repl_problem``). Every block must succeed. Only the ports differ
from the documents' 9000 and 9002 (the defaults of ``s3batchd dev``), which may be taken on a
test machine.

The documents run: README.md, docs/index-format.md, docs/operations.md, docs/passthrough.md,
docs/compatibility.md and docs/durability.md, each in a session of its own against the one
``s3batchd dev`` of this module. What stays unmarked, and why it cannot run here:

- ``make run`` / ``make test`` / ``make install``: ``make run`` is what the fixture starts (a
  second one would need the same ports), ``make test`` would run this suite inside itself;
- ``docker``, ``docker compose``: no container runtime on a test machine, and the image build
  downloads a base image;
- ``kubectl``, ``eksctl``, ``aws ecr|iam|eks``: a cluster and an AWS account;
- ``aws s3api ... --bucket BUCKET`` / ``example-bucket`` (lifecycle rules, bucket creation in a
  region): placeholders for the reader's real bucket on AWS;
- ``systemctl``, ``journalctl``, ``install`` into ``/etc`` and ``/opt``: root on a host with
  systemd;
- ``s3batchd serve|status|... --config /etc/s3batchd.toml`` (README, "Running it"): a
  production layout this machine does not have; the same commands run against ``make run``'s
  settings in the blocks that are marked;
- JSON policies and rules, YAML manifests and alerting rules, sizing formulas, key layouts:
  not commands (tests/test_deploy.py, test_deploy_guide.py and test_alerts.py check them).

deploy/README.md has only those kinds, so it has no marked block.
"""

from __future__ import annotations

import codeop
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from s3batchd.cli.seaweed import free_ports
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RUN_BLOCK = re.compile(r"^( *)```(sh|python|js) run\n(.*?)^\1```$", re.MULTILINE | re.DOTALL)
DOCUMENTED_PORT = "127.0.0.1:9000"
DOCUMENTED_ADMIN_PORT = "127.0.0.1:9002"
PY_END = "S3BATCHD_EXAMPLE_END"


@dataclass(frozen=True)
class Block:
    """One example: where it starts (for messages), its language and its code."""

    line: int
    language: str
    code: str


def run_blocks(text: str) -> list[Block]:
    """The ``sh run`` / ``python run`` blocks of a Markdown text, in order, dedented as far as
    their fence (blocks inside list items are indented)."""
    found: list[Block] = []
    for match in RUN_BLOCK.finditer(text):
        indent = len(match.group(1))
        lines = match.group(3).splitlines()
        code = "\n".join(line[indent:] for line in lines) + "\n"
        found.append(Block(text.count("\n", 0, match.start()) + 1, match.group(2), code))
    return found


def session(document: str, blocks: list[Block], port: int, admin_port: int) -> str:
    """One bash script running ``blocks`` in order, each announced on standard error."""
    parts = ["set -euo pipefail"]
    for block in blocks:
        code = block.code.replace(DOCUMENTED_PORT, f"127.0.0.1:{port}")
        code = code.replace(DOCUMENTED_ADMIN_PORT, f"127.0.0.1:{admin_port}")
        parts.append(f"echo '>>> {document}:{block.line} ({block.language})' >&2")
        if block.language == "sh":
            parts.append(code)
        else:
            assert PY_END not in code
            interpreter = "python -" if block.language == "python" else "node --input-type=module -"
            parts.append(f"{interpreter} <<'{PY_END}'\n{code}{PY_END}")
    return "\n".join(parts) + "\n"


@dataclass
class MakeRun:
    """``s3batchd dev`` serving in ``directory``."""

    directory: Path
    port: int
    admin_port: int
    env: dict[str, str]
    output: Path


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeRun]:
    """What ``make run`` starts, in an empty directory, shared by the documents (the admin
    listener on a free port, through the environment, which ``s3batchd dev`` and the commands
    both honour). None of the developer's AWS_* or S3BATCHD_* variables get in."""
    tmp_path = tmp_path_factory.mktemp("make-run")
    port, admin_port = free_ports(2)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "S3BATCHD_"))
    }
    env["S3BATCHD_SERVER__ADMIN_PORT"] = str(admin_port)
    output = tmp_path / "make-run.log"
    with output.open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / "s3batchd"), "dev", "--data-dir", ".local", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: process.poll() is not None or _answers(port), timeout=180)
        assert process.poll() is None, output.read_text()
        yield MakeRun(tmp_path, port, admin_port, env, output)
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C: seal, upload, stop SeaweedFS
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_document(make_run: MakeRun, document: str) -> str:
    """Run the marked blocks of ``document``; what the session printed on standard output."""
    blocks = run_blocks((ROOT / document).read_text(encoding="utf-8"))
    assert blocks, f"{document} has no `sh run` or `python run` blocks"
    result = subprocess.run(
        ["bash", "-c", session(document, blocks, make_run.port, make_run.admin_port)],
        cwd=make_run.directory,
        env=make_run.env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (
        f"a block of {document} failed (the last '>>>' line names it):\n"
        f"{result.stderr[-6000:]}\n--- stdout ---\n{result.stdout[-3000:]}"
    )
    return result.stdout


def test_run_blocks_are_found_with_their_lines() -> None:
    text = "a\n```sh run\necho 1\n```\n\n1. item\n\n   ```python run\n   print(2)\n   ```\n"
    assert run_blocks(text) == [Block(2, "sh", "echo 1\n"), Block(8, "python", "print(2)\n")]
    assert run_blocks("```sh\nnot run\n```\n") == []
    assert run_blocks("```js run\nconsole.log(3)\n```\n") == [Block(1, "js", "console.log(3)\n")]


def repl_problem(source: str) -> str | None:
    """Why pasting ``source`` into Python 3.11's interactive prompt fails, line by line as
    the prompt compiles it (a statement right after an indented block, without the blank
    line that ends the block there, is a SyntaxError), or None."""
    pending: list[str] = []
    for number, line in enumerate(source.splitlines(), 1):
        if not pending and not line.strip():
            continue
        pending.append(line)
        try:
            complete = codeop.compile_command("\n".join(pending), "<stdin>", "single")
        except SyntaxError as exc:
            return f"line {number}: {exc.msg}"
        if complete is not None:
            pending.clear()
    return None


@pytest.mark.parametrize("document", ["README.md", "docs/index-format.md"])
def test_python_examples_paste_into_the_interactive_prompt(document: str) -> None:
    blocks = run_blocks((ROOT / document).read_text(encoding="utf-8"))
    problems = {
        block.line: repl_problem(block.code) for block in blocks if block.language == "python"
    }
    assert {line: problem for line, problem in problems.items() if problem} == {}


def node_repl_problem(source: str) -> str | None:
    """Why pasting ``source`` into ``node``'s interactive prompt does not do what running it as
    a module does, or None: a line starting with ``.`` is a REPL command there, and the prompt
    runs the next pasted line without waiting for a top-level ``await`` (a ``const`` assigned
    by one is still undefined), so the code must also compile as a CommonJS script."""
    for number, line in enumerate(source.splitlines(), 1):
        if line.lstrip().startswith("."):
            return f"line {number}: the prompt takes a line starting with '.' for a command"
    check = subprocess.run(
        ["node", "--check", "--input-type=commonjs", "-"],
        input=source,
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        errors = [line for line in check.stderr.splitlines() if "Error" in line]
        return f"not a script (a top-level await?): {errors[:1]}"
    return None


def test_js_examples_paste_into_the_node_prompt() -> None:
    blocks = run_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    js = [block for block in blocks if block.language == "js"]
    assert js
    problems = {block.line: node_repl_problem(block.code) for block in js}
    assert {line: problem for line, problem in problems.items() if problem} == {}


def test_node_repl_problem_finds_top_level_await_and_dot_lines() -> None:
    assert node_repl_problem("const a = await f();\nconsole.log(a);\n") is not None
    assert node_repl_problem("f()\n  .then(console.log);\n") is not None
    assert node_repl_problem("f().then(async (a) => {\n  console.log(await a);\n});\n") is None


def test_repl_problem_finds_a_statement_after_a_block() -> None:
    assert repl_problem("for x in []:\n    pass\nprint(1)\n") is not None
    assert repl_problem("for x in []:\n    pass\n\nprint(1)\n") is None
    assert repl_problem("f(\n    1,\n)\nx = 2\n") is None


def test_readme_runs_as_written_after_make_run(make_run: MakeRun) -> None:
    assert shutil.which("curl"), "the README's examples use curl: install it"
    assert shutil.which("node"), "the README's JavaScript example needs node: `make test`"
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make run" in text.split("```sh run", 1)[0]
    assert "source .local/env.sh" in make_run.output.read_text()  # make run says where it is
    script = "".join(block.code for block in run_blocks(text))
    for command in ("get", "ls", "extract", "reindex", "status"):
        assert f"s3batchd {command} " in script or f"s3batchd {command}\n" in script, command
    printed = run_document(make_run, "README.md")
    assert "hello, s3batchd" in printed
    assert "206 hello, s3batchd" in printed  # the js block's ranged fetch
    assert "state:" in printed  # s3batchd status


def test_index_format_examples_run_after_make_run(make_run: MakeRun) -> None:
    printed = run_document(make_run, "docs/index-format.md")
    assert "GETs for 5 objects" in printed  # reader.get_many
    assert "extracted" in printed  # s3batchd extract


#: What each further document's session must print: a sign its last examples ran.
FURTHER_DOCUMENTS = {
    "docs/operations.md": "s3batchd/",  # the batch's day in the bucket
    "docs/passthrough.md": "NoSuchKey",
    "docs/compatibility.md": "download: s3://demo/sync/",
    "docs/durability.md": "application/json",  # the index's ContentType
}


@pytest.mark.parametrize("document", sorted(FURTHER_DOCUMENTS))
def test_further_documents_run_after_make_run(make_run: MakeRun, document: str) -> None:
    printed = run_document(make_run, document)
    assert FURTHER_DOCUMENTS[document] in printed


def test_deploy_readme_has_nothing_to_run_here() -> None:
    """Its examples need docker, kubectl, AWS or systemd (the module docstring): if one that
    can run here is added, mark it and move the document to ``FURTHER_DOCUMENTS``."""
    assert run_blocks((ROOT / "deploy" / "README.md").read_text(encoding="utf-8")) == []
