"""deploy/kubernetes/postgres: the Kubernetes example with the PostgreSQL catalog, as a
kustomize overlay of deploy/kubernetes. Its documents are validated like the base's
(kubernetes-validate, strict); the Deployment patch is applied to the base's Deployment first
(a strategic merge: lists of named items merged by name), as kustomize does."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, cast

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import psycopg
import pytest

from s3batchd.config import load_settings
from s3batchd.errors import ConfigError
from tests.test_deploy import (
    KUBERNETES,
    KUBERNETES_VERSIONS,
    ROOT,
    Doc,
    deployment,
    dockerfile_env,
    load_yaml_documents,
    resource,
)

OVERLAY = KUBERNETES / "postgres"


def overlay_file(name: str) -> Doc:
    [document] = load_yaml_documents(OVERLAY / name)
    return document


def kustomization() -> Doc:
    return overlay_file("kustomization.yaml")


def merged(base: Any, patch: Any) -> Any:
    """``patch`` applied to ``base`` as a strategic merge patch of these documents does."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = merged(base[key], value) if key in base else copy.deepcopy(value)
        return out
    named = isinstance(base, list) and isinstance(patch, list)
    if named and all(isinstance(item, dict) and "name" in item for item in [*base, *patch]):
        out_items = [copy.deepcopy(item) for item in base]
        for item in patch:
            found = [i for i, old in enumerate(out_items) if old["name"] == item["name"]]
            if found:
                out_items[found[0]] = merged(out_items[found[0]], item)
            else:
                out_items.append(copy.deepcopy(item))
        return out_items
    return copy.deepcopy(patch)


def patched_deployment() -> Doc:
    return cast(Doc, merged(deployment(), overlay_file("sidecar.yaml")))


def overlay_documents() -> list[Doc]:
    """What the overlay adds or replaces, with the patches applied."""
    return [
        overlay_file("secret.yaml"),
        overlay_file("networkpolicy.yaml"),
        cast(Doc, merged(resource("ConfigMap", "s3batchd-config"), overlay_file("config.yaml"))),
        patched_deployment(),
    ]


def test_the_overlay_lists_every_file() -> None:
    spec = kustomization()
    assert spec["kind"] == "Kustomization"
    assert spec["resources"][0] == "../"
    listed = {*spec["resources"][1:], *(patch["path"] for patch in spec["patches"])}
    assert listed == {p.name for p in OVERLAY.glob("*.yaml")} - {"kustomization.yaml"}
    base = load_yaml_documents(KUBERNETES / "kustomization.yaml")[0]
    assert spec["namespace"] == base["namespace"]
    for document in overlay_documents():
        assert document["metadata"]["namespace"] == base["namespace"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_overlay_documents_are_valid(version: str) -> None:
    problems = []
    for doc in overlay_documents():
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            assert kubernetes_validate.validate(doc, version, strict=True) == version
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_the_sidecar_reads_the_dsn_from_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = patched_deployment()["spec"]["template"]["spec"]
    [sidecar] = [c for c in spec["initContainers"] if c["name"] == "s3batchd"]
    [env] = sidecar["env"]
    secret = overlay_file("secret.yaml")
    reference = env["valueFrom"]["secretKeyRef"]
    assert env["name"] == "S3BATCHD_CATALOG__DSN"
    assert reference["name"] == secret["metadata"]["name"]
    dsn = secret["stringData"][reference["key"]]
    # The overlay's config.toml is the base's with the [catalog] section at its end.
    base_text = resource("ConfigMap", "s3batchd-config")["data"]["config.toml"]
    text = overlay_file("config.yaml")["data"]["config.toml"]
    assert text.startswith(base_text)
    assert "[catalog]" in text[len(base_text) :]
    # As the sidecar loads it: the image's environment and the Secret's DSN.
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    for name, value in dockerfile_env().items():
        if name.startswith("S3BATCHD_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv(env["name"], dsn)
    settings = load_settings(path)
    assert settings.catalog.backend == "postgres"
    assert settings.catalog.dsn.get_secret_value() == dsn
    assert dsn.startswith("postgresql://") and "sslmode=verify-full" in dsn
    monkeypatch.delenv(env["name"])
    with pytest.raises(ConfigError, match=r"needs catalog\.dsn"):
        load_settings(path)


def test_egress_to_the_database_port() -> None:
    policy = overlay_file("networkpolicy.yaml")["spec"]
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Egress"]
    ports = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert ports == {("TCP", 5432)}


def test_the_example_dsn_verifies_the_server_against_a_ca_libpq_can_find() -> None:
    """sslmode=verify-full without sslrootcert makes libpq read ~/.postgresql/root.crt, which
    the image does not have: every connection would fail. ``system`` needs libpq 16+."""
    text = (ROOT / "deploy/kubernetes/postgres/secret.yaml").read_text()
    dsn = next(line.split("dsn:", 1)[1].strip() for line in text.splitlines() if "dsn:" in line)
    options = psycopg.conninfo.conninfo_to_dict(dsn)
    assert options["sslmode"] == "verify-full"
    assert options.get("sslrootcert") == "system"
    assert psycopg.pq.version() >= 160000
