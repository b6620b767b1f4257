"""deploy/README.md and docs/operations.md agree with the manifests they describe: the IAM
policy covers what the example forwards, one policy in both documents, the egress rule for an
endpoint on another port, Compose's resource limits as Kubernetes'."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, cast

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import yaml

from tests.test_deploy import (
    DEPLOY_README,
    KUBERNETES_VERSIONS,
    ROOT,
    compose,
    configmap_settings,
    quantity_bytes,
    resource,
    sidecar,
)

OPERATIONS = ROOT / "docs" / "operations.md"
#: The IAM actions (and whether on objects or on the bucket) each forwarded S3 operation
#: needs, from the AWS S3 API reference's "Permissions" of each operation.
OBJECT, BUCKET = "object", "bucket"
ACTIONS: dict[str, list[tuple[str, str]]] = {
    "GetObject": [("s3:GetObject", OBJECT)],
    "HeadObject": [("s3:GetObject", OBJECT)],
    "PutObject": [("s3:PutObject", OBJECT)],
    "CreateMultipartUpload": [("s3:PutObject", OBJECT)],
    "UploadPart": [("s3:PutObject", OBJECT)],
    "CompleteMultipartUpload": [("s3:PutObject", OBJECT)],
    "AbortMultipartUpload": [("s3:AbortMultipartUpload", OBJECT)],
    "ListParts": [("s3:ListMultipartUploadParts", OBJECT)],
    "CopyObject": [("s3:GetObject", OBJECT), ("s3:PutObject", OBJECT)],
    "UploadPartCopy": [("s3:GetObject", OBJECT), ("s3:PutObject", OBJECT)],
    "DeleteObject": [("s3:DeleteObject", OBJECT)],
    "DeleteObjects": [("s3:DeleteObject", OBJECT)],
    "ListObjects": [("s3:ListBucket", BUCKET)],
    "ListObjectsV2": [("s3:ListBucket", BUCKET)],
    "HeadBucket": [("s3:ListBucket", BUCKET)],
    "ListMultipartUploads": [("s3:ListBucketMultipartUploads", BUCKET)],
    "GetBucketLocation": [("s3:GetBucketLocation", BUCKET)],
}
#: What `aws s3 cp / ls / rm / sync` and the SDKs' transfer managers send: the operations
#: with ``passthrough = ["*"]`` the documented policy must cover.
EVERYDAY = frozenset(ACTIONS)


def json_blocks(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.S)]


def s3batchd_policy(path: Path) -> dict[str, Any]:
    """The policy of ``path`` whose statements are s3batchd's (Sid ``S3batchd...``)."""
    [policy] = [
        block
        for block in json_blocks(path)
        if "Statement" in block
        and all(str(s.get("Sid", "")).startswith("S3batchd") for s in block["Statement"])
    ]
    return cast("dict[str, Any]", policy)


def allowed(policy: dict[str, Any], bucket: str) -> set[tuple[str, str]]:
    """(action, object|bucket) pairs the policy allows on every key of ``bucket``."""
    pairs: set[tuple[str, str]] = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        for arn in statement["Resource"]:
            kind = {f"arn:aws:s3:::{bucket}/*": OBJECT, f"arn:aws:s3:::{bucket}": BUCKET}.get(arn)
            if kind is not None:
                pairs.update((action, kind) for action in statement["Action"])
    return pairs


def test_iam_policy_covers_what_the_kubernetes_example_forwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passthrough = configmap_settings(tmp_path, monkeypatch).passthrough
    forwarded = {op for op in ACTIONS if passthrough.allows(op)}
    if "*" in passthrough.operations:
        assert forwarded >= EVERYDAY
    needed = {pair for op in forwarded for pair in ACTIONS[op]}
    bucket = "example-bucket"
    assert f"value: {bucket}" in DEPLOY_README.parent.joinpath(
        "kubernetes", "deployment.yaml"
    ).read_text(encoding="utf-8")
    missing = needed - allowed(s3batchd_policy(DEPLOY_README), bucket)
    assert not missing, f"forwarded with passthrough {passthrough.operations}, not allowed"


def test_one_iam_policy_in_both_documents() -> None:
    ours = json.dumps(s3batchd_policy(OPERATIONS)).replace("BUCKET", "example-bucket")
    assert json.loads(ours) == s3batchd_policy(DEPLOY_README)


def test_operations_table_names_the_action_of_each_operation() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    rows = [line.split("|")[1:3] for line in text.splitlines() if line.startswith("| ")]
    for operation, pairs in ACTIONS.items():
        for action, _ in pairs:
            assert any(
                re.search(rf"\b{operation}\b", what) and f"`{action}`" in granted
                for what, granted in rows
            ), (operation, action)


def yaml_blocks(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_readme_egress_rule_for_another_port_fits_the_network_policy(version: str) -> None:
    [[rule]] = [
        block
        for block in yaml_blocks(DEPLOY_README)
        if isinstance(block, list) and len(block) == 1 and set(block[0]) == {"to", "ports"}
    ]
    policy = copy.deepcopy(resource("NetworkPolicy", "example-app"))
    policy["spec"]["egress"].append(rule)
    kubernetes_validate.validate(policy, version, strict=True)
    assert {port["port"] for port in rule["ports"]} - {443}


def compose_bytes(value: str) -> int:
    """A Compose byte value (``512m``, ``1g``: binary units) in bytes."""
    number, unit = re.fullmatch(r"(\d+)([kmg]?)b?", value.lower()).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit]


def cpus(value: str) -> float:
    return int(value[:-1]) / 1000 if value.endswith("m") else float(value)


def test_compose_has_the_resource_limits_of_the_kubernetes_example() -> None:
    services = compose()["services"]
    containers = {"s3batchd": sidecar(), "app": _app()}
    for name, container in containers.items():
        resources = services[name]["deploy"]["resources"]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert float(resources["limits"]["cpus"]) == cpus(limits["cpu"]), name
        assert compose_bytes(resources["limits"]["memory"]) == quantity_bytes(limits["memory"])
        assert float(resources["reservations"]["cpus"]) == cpus(requests["cpu"]), name
        assert compose_bytes(resources["reservations"]["memory"]) == quantity_bytes(
            requests["memory"]
        )
    seaweedfs = services["seaweedfs"]["deploy"]["resources"]["limits"]
    assert compose_bytes(seaweedfs["memory"]) > 0


def _app() -> dict[str, Any]:
    deployment = resource("Deployment", "example-app")
    [app] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "app"]
    return app  # type: ignore[no-any-return]
