"""The deployment files pass their linters and agree with the code and with each other.

Dockerfile: hadolint. deploy/kubernetes: kubernetes-validate, strict, against the API schemas
of the oldest Kubernetes with GA native sidecars and the newest the package ships.
deploy/compose.yaml: the Compose Specification schema vendored by check-jsonschema.
deploy/s3batchd.service: its settings (and ``systemd-analyze verify`` where it exists).
All offline: the schemas and the hadolint binary come from PyPI packages in .venv.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Any, cast

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import yaml
from packaging.specifiers import SpecifierSet

from s3batchd.cli.main import EXIT_BATCHES_KEPT
from s3batchd.config import Settings, is_loopback, load_settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUSTOMIZATION = KUBERNETES / "kustomization.yaml"
COMPOSE = DEPLOY / "compose.yaml"
UNIT = DEPLOY / "s3batchd.service"
DEPLOY_README = DEPLOY / "README.md"
BIN = Path(sys.executable).parent

#: Native sidecars are GA from 1.33; 1.37 is the newest schema kubernetes-validate 1.37 ships.
KUBERNETES_VERSIONS = ("1.33", "1.37")
SIDECAR = "s3batchd"
CONFIG_PATH = "/etc/s3batchd/config.toml"
SERVE_ARGS = ["serve", "--config", CONFIG_PATH]

Doc = dict[str, Any]


# --- helpers -----------------------------------------------------------------------------


def tool(name: str) -> str:
    """A command installed into the test environment (next to this Python), else on PATH."""
    beside = BIN / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    assert found is not None, f"{name} not installed: pip install -e '.[dev]'"
    return found


def load_yaml_documents(path: Path) -> list[Doc]:
    """Every non-empty document of a YAML file, each a mapping."""
    documents = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    for doc in documents:
        assert isinstance(doc, dict), f"{path.name}: a document is not a mapping"
    return cast(list[Doc], documents)


def manifest_files() -> list[Path]:
    """The Kubernetes manifests (everything but the kustomization)."""
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p != KUSTOMIZATION)


def manifests() -> list[Doc]:
    return [doc for path in manifest_files() for doc in load_yaml_documents(path)]


def resource(kind: str, name: str) -> Doc:
    found = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def deployment() -> Doc:
    return resource("Deployment", "example-app")


def pod_spec() -> Doc:
    return cast(Doc, deployment()["spec"]["template"]["spec"])


def sidecar() -> Doc:
    found = [c for c in pod_spec()["initContainers"] if c["name"] == SIDECAR]
    assert len(found) == 1
    return cast(Doc, found[0])


def all_containers() -> list[Doc]:
    spec = pod_spec()
    return cast(list[Doc], spec.get("initContainers", []) + spec["containers"])


def volume(name: str) -> Doc:
    found = [v for v in pod_spec()["volumes"] if v["name"] == name]
    assert len(found) == 1, name
    return cast(Doc, found[0])


def mount_path(container: Doc, volume_name: str) -> str:
    found = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume_name]
    assert len(found) == 1, volume_name
    return cast(str, found[0])


def configmap_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The ConfigMap's config.toml as the sidecar loads it: with the image's environment."""
    text = resource("ConfigMap", "s3batchd-config")["data"]["config.toml"]
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    for name, value in dockerfile_env().items():
        if name.startswith("S3BATCHD_"):
            monkeypatch.setenv(name, value)
    return load_settings(path)


_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes storage quantity (``2Gi``, ``512Mi``, ``1G``, ``1000``) in bytes."""
    match = re.fullmatch(r"(\d+)([KMGT]i|[kMG])?", quantity)
    assert match is not None, quantity
    number, unit = match.groups()
    return int(number) * (_UNITS[unit] if unit else 1)


def duration_s(text: str) -> float:
    """A Compose duration (``75s``, ``1m30s``) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    return sum(float(number) * scale[unit] for number, unit in parts)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "Dockerfile ends in a continuation line"
    return instructions


def dockerfile(keyword: str) -> list[str]:
    return [args for key, args in dockerfile_instructions() if key == keyword]


def dockerfile_env() -> dict[str, str]:
    """ENV of the Dockerfile's final stage (``KEY=value`` pairs)."""
    env: dict[str, str] = {}
    final_stage = False
    for key, args in dockerfile_instructions():
        if key == "FROM":
            final_stage = " AS " not in args.upper()
        elif key == "ENV" and final_stage:
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def dockerfile_args() -> dict[str, str]:
    """ARG defaults (the last one of each name)."""
    args: dict[str, str] = {}
    for declaration in dockerfile("ARG"):
        name, _, default = declaration.partition("=")
        args[name] = default
    return args


def compose() -> Doc:
    documents = load_yaml_documents(COMPOSE)
    assert len(documents) == 1
    return documents[0]


def readme_json_blocks() -> list[Any]:
    text = DEPLOY_README.read_text(encoding="utf-8")
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.S)]


def unit_settings() -> dict[str, list[str]]:
    """Every ``Key=value`` of the systemd unit (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


# --- Dockerfile --------------------------------------------------------------------------


def run_hadolint(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # A clean environment and working directory: no .hadolint.yaml or HADOLINT_* from the
    # developer's machine can relax the rules.
    return subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "style", str(path)],
        cwd=cwd,
        env={"HOME": str(cwd), "XDG_CONFIG_HOME": str(cwd), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    result = run_hadolint(DOCKERFILE, tmp_path)
    assert (result.returncode, result.stdout.strip()) == (0, ""), result.stdout + result.stderr


def test_hadolint_reports_findings(tmp_path: Path) -> None:
    """The check above can fail: an unpinned base and pip install are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n", encoding="utf-8")
    result = run_hadolint(bad, tmp_path)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag
    assert "DL3013" in result.stdout  # unpinned pip install


def test_dockerfile_base_is_a_pinned_python_the_project_supports() -> None:
    base = dockerfile_args()["PYTHON_IMAGE"]
    match = re.fullmatch(
        r"python:(\d+\.\d+\.\d+)-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?", base
    )
    assert match is not None, f"not a full python:X.Y.Z-slim-<debian> tag: {base}"
    requires = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["requires-python"]
    assert match.group(1) in SpecifierSet(requires)
    froms = dockerfile("FROM")
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"], "both stages, one base"
    # The compose file's namespace holder uses the same base (already pulled by the build).
    assert compose()["services"]["pod"]["image"] == base


def test_dockerfile_installs_the_repository_not_packages_by_name() -> None:
    """The image is built from pyproject.toml + s3batchd/, so it cannot drift from them."""
    copies = dockerfile("COPY")
    assert "pyproject.toml README.md constraints.txt ./" in copies
    assert "s3batchd/ s3batchd/" in copies
    readme = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["readme"]
    assert readme == "README.md"  # hatchling needs it to build the wheel
    pip_commands = [
        command.strip()
        for run in dockerfile("RUN")
        for command in run.split("&&")
        if re.search(r"\bpip (install|wheel)\b", command)
    ]
    assert pip_commands == [
        "/opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels /src",
        "/opt/venv/bin/pip install --constraint /src/constraints.txt /wheels/s3batchd-*.whl",
    ]
    for command in pip_commands:  # every requirement is a path, none a name from an index
        operands = [a for a in shlex.split(command)[3:] if not a.startswith("-")]
        assert all(a.startswith("/") for a in operands), command
    assert "--from=build /opt/venv /opt/venv" in copies


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = [
        source.rstrip("/")
        for copy in dockerfile("COPY")
        if not copy.startswith("--from")
        for source in copy.split()[:-1]
    ]
    assert sources
    assert set(sources) <= allowed


def test_dockerfile_runtime_contract() -> None:
    defaults = Settings()
    env = dockerfile_env()
    spool = env["S3BATCHD_SPOOL__DIR"]
    assert dockerfile("VOLUME") == [json.dumps([spool])]
    assert env["PATH"].split(":")[0] == "/opt/venv/bin"
    assert dockerfile("USER") == ["${UID}:${GID}"]
    ids = dockerfile_args()
    assert int(ids["UID"]) >= 10000 and int(ids["GID"]) >= 10000
    assert dockerfile("EXPOSE") == [f"{defaults.server.port} {defaults.server.admin_port}"]
    assert dockerfile("ENTRYPOINT") == ['["s3batchd"]']
    assert dockerfile("CMD") == [json.dumps(SERVE_ARGS)]
    assert dockerfile("STOPSIGNAL") == ["SIGTERM"]
    assert "config.example.toml /etc/s3batchd/config.toml" in dockerfile("COPY")
    [healthcheck] = dockerfile("HEALTHCHECK")
    assert f"http://127.0.0.1:{defaults.server.admin_port}/healthz" in healthcheck
    probe = json.loads(healthcheck.split("CMD", 1)[1])
    assert probe[:2] == ["python", "-c"]
    ast.parse(probe[2])


def test_image_defaults_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's config file plus its environment make valid settings."""
    for name, value in dockerfile_env().items():
        if name.startswith("S3BATCHD_"):
            monkeypatch.setenv(name, value)
    settings = load_settings(ROOT / "config.example.toml")
    assert str(settings.spool.dir) == dockerfile_env()["S3BATCHD_SPOOL__DIR"]


# --- Kubernetes --------------------------------------------------------------------------


def test_kubernetes_validate_ships_the_versions() -> None:
    shipped = set(kubernetes_validate.utils.all_versions())
    assert {f"{version}.0" for version in KUBERNETES_VERSIONS} <= shipped


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_are_valid(version: str) -> None:
    documents = manifests()
    assert {d["kind"] for d in documents} >= {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
    }
    problems = []
    for doc in documents:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            validated = kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{name}: {exc.message}")
        else:
            assert validated == version
    assert not problems, "\n".join(problems)


def test_kubernetes_validate_strict_rejects_unknown_fields() -> None:
    """The check above can fail: a misspelt field of the sidecar is an error."""
    doc = deployment()
    doc["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    [kustomization] = load_yaml_documents(KUSTOMIZATION)
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in manifest_files())
    namespaces = {d["metadata"].get("namespace") for d in manifests() if d["kind"] != "Namespace"}
    assert namespaces == {kustomization["namespace"]}
    [image] = kustomization["images"]
    assert {c["image"].rsplit(":", 1)[0] for c in all_containers()} == {image["name"]}


def test_s3batchd_is_a_native_sidecar() -> None:
    container = sidecar()
    assert container["restartPolicy"] == "Always"
    assert container["args"] == SERVE_ARGS
    assert "command" not in container  # the image's ENTRYPOINT
    assert mount_path(container, "config") == str(Path(CONFIG_PATH).parent)
    assert volume("config")["configMap"]["name"] == "s3batchd-config"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "admin", probe
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_configmap_config_loads_and_fits_the_pod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = configmap_settings(tmp_path, monkeypatch)
    assert is_loopback(settings.server.host), "the S3 port must stay inside the pod"
    assert settings.server.admin_host == "0.0.0.0"
    [admin] = sidecar()["ports"]
    assert (admin["name"], admin["containerPort"]) == ("admin", settings.server.admin_port)
    ports = {p["containerPort"] for c in all_containers() for p in c.get("ports", [])}
    assert settings.server.port not in ports, "the loopback S3 port is not a pod port"
    assert str(settings.spool.dir) == mount_path(sidecar(), "spool")
    # The file says the same as the image's environment, which wins.
    text = resource("ConfigMap", "s3batchd-config")["data"]["config.toml"]
    assert tomllib.loads(text)["spool"]["dir"] == str(settings.spool.dir)


def test_grace_period_covers_the_drain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drain = configmap_settings(tmp_path, monkeypatch).shutdown.drain_timeout_s
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert grace > drain
    # Requests in progress may take up to max(1, drain) more, and the app stops first.
    assert grace >= 2 * max(1, drain) + 10


def test_spool_quota_fits_the_emptydir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past sizeLimit the kubelet evicts the pod (deleting the spool): the quota comes first."""
    settings = configmap_settings(tmp_path, monkeypatch)
    spool = volume("spool")
    size_limit = quantity_bytes(spool["emptyDir"]["sizeLimit"])
    headroom = settings.batch.max_bytes + settings.limits.max_object_bytes
    assert settings.spool.max_bytes + headroom <= size_limit
    reserved = quantity_bytes(sidecar()["resources"]["requests"]["ephemeral-storage"])
    assert reserved >= size_limit


def test_pod_security() -> None:
    spec = pod_spec()
    pod_security = spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == int(dockerfile_args()["UID"])
    assert pod_security["fsGroup"] == int(dockerfile_args()["GID"])
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for container in all_containers():
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True, container["name"]
        assert security["allowPrivilegeEscalation"] is False, container["name"]
        assert security["readOnlyRootFilesystem"] is True, container["name"]
        assert security["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), container["name"]
    namespace = resource("Namespace", "s3batchd-example")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_irsa_is_for_s3batchd_only() -> None:
    account = resource("ServiceAccount", "example-app")
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@/-]+", role)
    assert pod_spec()["serviceAccountName"] == "example-app"
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    others = {c["name"] for c in pod_spec()["containers"]}
    assert set(annotations["eks.amazonaws.com/skip-containers"].split(",")) == others


def test_network_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = resource("NetworkPolicy", "example-app")["spec"]
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    admin_port = configmap_settings(tmp_path, monkeypatch).server.admin_port
    ingress_ports = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert ingress_ports == {admin_port}
    for rule in policy["ingress"]:
        assert rule["from"], "ingress from somewhere in particular"
    egress_ports = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {("UDP", 53), ("TCP", 53), ("TCP", 443)}


def test_example_app_script_compiles() -> None:
    script = resource("ConfigMap", "example-app")["data"]["writer.py"]
    ast.parse(script)
    assert "http://127.0.0.1:9000" in script
    [app] = pod_spec()["containers"]
    assert app["command"][-1] == f"{mount_path(app, 'app-script')}/writer.py"


# --- Compose -----------------------------------------------------------------------------


def compose_schema() -> Doc:
    text = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(text.read_text(encoding="utf-8"))
    assert schema["title"] == "Compose Specification"
    return cast(Doc, schema)


def compose_errors(document: Doc) -> list[str]:
    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.path)))
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]


def test_compose_file_matches_the_compose_specification() -> None:
    assert compose_errors(compose()) == []


def test_compose_schema_rejects_unknown_keys() -> None:
    """The check above can fail: a misspelt service key is an error."""
    document = compose()
    document["services"]["s3batchd"]["network_mod"] = "host"
    assert compose_errors(document)


def test_compose_exposure() -> None:
    services = compose()["services"]
    assert set(services) == {"pod", "s3batchd", "app", "seaweedfs"}
    for name, service in services.items():
        assert "ports" not in service, f"{name} publishes a port"
        assert service.get("network_mode") != "host", name
    assert services["s3batchd"]["network_mode"] == "service:pod"
    assert services["app"]["network_mode"] == "service:pod"
    assert compose()["networks"]["backend"]["internal"] is True
    assert services["app"]["depends_on"]["s3batchd"]["condition"] == "service_healthy"


def test_compose_s3batchd_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    service = services["s3batchd"]
    assert service["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    assert (COMPOSE.parent / service["build"]["context"] / "Dockerfile").resolve() == DOCKERFILE
    for name, value in {**dockerfile_env(), **service["environment"]}.items():
        if name.startswith("S3BATCHD_"):
            monkeypatch.setenv(name, str(value))
    settings = load_settings(ROOT / "config.example.toml")  # the image's config file
    assert settings.upstream.endpoint_url == "http://seaweedfs:8333"
    assert is_loopback(settings.server.host)
    assert f"spool:{settings.spool.dir}" in service["volumes"]
    assert duration_s(service["stop_grace_period"]) > 2 * settings.shutdown.drain_timeout_s
    seaweedfs = services["seaweedfs"]["environment"]
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert service["environment"][key] == seaweedfs[key]
    assert "-bucket=" + services["app"]["environment"]["BUCKET"] in services["seaweedfs"]["command"]


def test_compose_app_script_compiles() -> None:
    app = compose()["services"]["app"]
    assert app["entrypoint"] == ["python", "-c"]
    [script] = app["command"]
    ast.parse(script)
    assert "http://127.0.0.1:9000" in script


# --- systemd -----------------------------------------------------------------------------


def test_systemd_unit_settings() -> None:
    unit = unit_settings()
    [exec_start] = unit["ExecStart"]
    assert shlex.split(exec_start)[1:] == SERVE_ARGS
    assert unit["KillSignal"] == ["SIGTERM"]
    assert float(unit["TimeoutStopSec"][0]) > 2 * Settings().shutdown.drain_timeout_s
    assert str(EXIT_BATCHES_KEPT) in unit["SuccessExitStatus"][0].split()
    assert unit["DynamicUser"] == ["yes"]
    assert unit["StateDirectory"] == ["s3batchd"]
    assert unit["Environment"] == ["S3BATCHD_SPOOL__DIR=%S/s3batchd/spool"]
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert unit[key] == [value], key


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """systemd's own parser accepts the unit (pointed at this environment's s3batchd)."""
    text = UNIT.read_text(encoding="utf-8")
    [exec_start] = unit_settings()["ExecStart"]
    binary = shlex.split(exec_start)[0]
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(binary, tool("s3batchd")), encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert UNIT.name not in result.stderr, result.stderr  # no warnings about this unit


def syscall_set(name: str) -> set[str]:
    """The system calls ``name`` (a call or an ``@group``, nested groups expanded) stands for,
    as systemd lists them."""
    if not name.startswith("@"):
        return {name}
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", name],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()[1:]
    members = [
        line.strip() for line in listing if line.strip() and not line.strip().startswith("#")
    ]
    return set().union(*(syscall_set(member) for member in members))


def allowed_syscalls(filters: list[str]) -> set[str]:
    """What a unit's ``SystemCallFilter=`` lines allow when the first one is an allow list:
    each later line adds (or, with ``~``, removes) its calls (systemd.exec(5))."""
    assert not filters[0].startswith("~"), "the unit's filter is an allow list"
    allowed: set[str] = set()
    for line in filters:
        deny = line.startswith("~")
        names = set().union(*(syscall_set(name) for name in line.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_allows_what_the_daemon_calls() -> None:
    allowed = allowed_syscalls(unit_settings()["SystemCallFilter"])
    # upload.child_processes: the upload process lowers its priority with os.nice(), which
    # glibc implements with getpriority + setpriority.
    assert {"getpriority", "setpriority"} <= allowed
    # What the filter is for stays out: the privileged calls and the rest of @resources.
    assert not ({"mount", "reboot", "setrlimit", "sched_setscheduler"} & allowed)


# --- deploy/README.md --------------------------------------------------------------------


def test_readme_iam_policy_and_lifecycle_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = configmap_settings(tmp_path, monkeypatch).upstream.prefix
    blocks = readme_json_blocks()
    # s3batchd's policy, not the IRSA role's trust policy; its batch statement (the others
    # are for forwarded requests: tests/test_deploy_guide.py).
    [policy] = [b for b in blocks if "Statement" in b and "Sid" in b["Statement"][0]]
    [statement] = [s for s in policy["Statement"] if s["Sid"] == "S3batchdBatches"]
    assert statement["Effect"] == "Allow"
    assert sorted(statement["Action"]) == sorted(
        [
            "s3:PutObject",
            "s3:GetObject",
            "s3:AbortMultipartUpload",
            "s3:ListMultipartUploadParts",
        ]
    )
    for arn in statement["Resource"]:
        assert re.fullmatch(rf"arn:aws:s3:::[a-z0-9.-]+/{re.escape(prefix)}\*", arn), arn
    [lifecycle] = [b for b in blocks if "Rules" in b]
    [rule] = lifecycle["Rules"]
    assert rule["Status"] == "Enabled"
    assert rule["Filter"] == {"Prefix": prefix}
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
