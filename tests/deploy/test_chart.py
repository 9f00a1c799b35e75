"""The Helm chart's offline checks (deploy/k8s/check_chart.py, run by `make lint`): they pass on
the chart as it is, and they fail on a bad values file, an invalid manifest, a template error
and a pod that breaks the deploy rules."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.envoy.render import EdgeSettings, render
from deploy.k8s.check_chart import CHART, PRODUCTION_VALUES, check, manifests
from deploy.k8s.check_chart import render as render_chart
from services.devrun import ROOT


def chart_copy(tmp_path: Path) -> Path:
    """A writable copy of the chart (the envoy.yaml symlink copied as a file)."""
    target = tmp_path / "comfyfleet"
    shutil.copytree(CHART, target, symlinks=False)
    return target


def write_values(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_the_chart_passes_with_default_and_production_values() -> None:
    assert check(CHART, [None, PRODUCTION_VALUES]) == []


def test_production_values_render_every_part() -> None:
    docs = manifests(render_chart(CHART, yaml.safe_load(PRODUCTION_VALUES.read_text())))
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("StatefulSet", "comfyfleet-scheduler") in kinds
    assert {("Deployment", f"comfyfleet-runner-{p}") for p in ("a100", "l4")} <= kinds
    assert {"Ingress", "ServiceMonitor", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= {
        k for k, _ in kinds}
    [a100] = [d for d in docs if d["metadata"]["name"] == "comfyfleet-runner-a100"]
    comfyui = a100["spec"]["template"]["spec"]["containers"][0]
    assert comfyui["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert a100["spec"]["template"]["spec"]["nodeSelector"] == {"cloud.example.com/gpu-type": "a100-80gb"}
    agent = a100["spec"]["template"]["spec"]["containers"][1]
    agent_env = {e["name"]: e.get("value") for e in agent["env"]}
    assert agent_env["RUNNER_TAGS"] == "gpu,a100,sdxl,flux" and agent_env["RUNNER_SLOTS"] == "2"
    # The agent reads outputs from ComfyUI's output/ and temp/, the same volumes, read-only.
    assert agent_env["RUNNER_COMFYUI_DIR"] == "/opt/ComfyUI"
    shared = {m["mountPath"]: (m["name"], m.get("readOnly")) for m in agent["volumeMounts"] if m["name"] != "tmp"}
    comfyui_mounts = {m["mountPath"]: m["name"] for m in comfyui["volumeMounts"]}
    assert {p: v for p, v in shared.items() if p.startswith("/opt/")} == {
        "/opt/ComfyUI/output": (comfyui_mounts["/opt/ComfyUI/output"], True),
        "/opt/ComfyUI/temp": (comfyui_mounts["/opt/ComfyUI/temp"], True),
    }


def test_a_pool_without_comfyuis_folder_has_its_outputs_fetched_by_view() -> None:
    values = yaml.safe_load(PRODUCTION_VALUES.read_text())
    for pool in values["runnerPools"]:
        pool["comfyui"]["dir"] = ""
    docs = manifests(render_chart(CHART, values))
    [a100] = [d for d in docs if d["metadata"]["name"] == "comfyfleet-runner-a100"]
    agent = a100["spec"]["template"]["spec"]["containers"][1]
    assert "RUNNER_COMFYUI_DIR" not in {e["name"] for e in agent["env"]}
    assert not [m for m in agent["volumeMounts"] if m["mountPath"].startswith("/opt/")]


def test_the_chart_envoy_config_is_the_template_rendered_for_the_cluster() -> None:
    docs = manifests(render_chart(CHART, {}))
    [config] = [d for d in docs if d["kind"] == "ConfigMap" and "envoy.yaml" in d["data"]]
    expected = render(EdgeSettings(gateway="comfyfleet-gateway:8080", scheduler="comfyfleet-scheduler:50051",
                                   listen_address="0.0.0.0", admin_address="0.0.0.0"))
    assert config["data"]["envoy.yaml"].strip() == expected.strip()


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"gateway": {"replicas": "two"}}, "replicas"),
        ({"scheduler": {"replicas": 3}}, "replicas"),
        ({"runnerPools": [{"name": "Bad_Name"}]}, "runnerPools"),
        ({"gatewy": {}}, "gatewy"),
    ],
    ids=["string-replicas", "three-schedulers", "bad-pool", "unknown-key"],
)
def test_invalid_values_fail(tmp_path: Path, values: dict[str, Any], expected: str) -> None:
    problems = check(CHART, [write_values(tmp_path, values)])
    assert problems and any(expected in p for p in problems), problems


def test_an_invalid_manifest_fails_kubernetes_validate(tmp_path: Path) -> None:
    chart = chart_copy(tmp_path)
    (chart / "templates" / "broken.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken}\n"
        "spec:\n  ports:\n    - {port: 80, protocl: TCP}\n")
    problems = check(chart, [None])
    assert any("Service/broken" in p and "protocl" in p for p in problems), problems


def test_a_template_error_fails(tmp_path: Path) -> None:
    chart = chart_copy(tmp_path)
    (chart / "templates" / "broken.yaml").write_text("{{ .Values.gateway.port | nosuchfunction }}\n")
    problems = check(chart, [None])
    assert any("nosuchfunction" in p for p in problems), problems


def test_a_pod_with_a_writable_root_filesystem_fails(tmp_path: Path) -> None:
    chart = chart_copy(tmp_path)
    helpers = chart / "templates" / "_helpers.tpl"
    helpers.write_text(helpers.read_text().replace("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false"))
    problems = check(chart, [None])
    assert any("readOnlyRootFilesystem is not true" in p for p in problems), problems


def test_the_command_make_lint_runs_exits_1_on_a_broken_chart(tmp_path: Path) -> None:
    chart = chart_copy(tmp_path)
    (chart / "templates" / "runners.yaml").unlink()  # the runner NetworkPolicy and pods go away: still valid
    (chart / "templates" / "gateway.yaml").write_text(
        (CHART / "templates" / "gateway.yaml").read_text().replace("kind: NetworkPolicy", "kind: NetworkPolicyy"))
    result = subprocess.run([sys.executable, "-m", "deploy.k8s.check_chart", "--chart", str(chart)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "NetworkPolicyy" in result.stderr and "FAILED" in result.stdout
