"""Offline checks of the Helm chart, for `make lint` and tests/deploy (no cluster, no helm binary).

For each values file (the chart's defaults, then each given file):
  1. render the chart with helm-python-sdk (Helm's own library; values.schema.json is enforced),
  2. lint it (helm's lint returns its findings instead of raising: any error fails),
  3. validate every rendered manifest with kubernetes-validate --strict for the Kubernetes
     version the chart names (the lower bound of Chart.yaml's kubeVersion),
  4. check the rules of STYLE.md's deploy section on every pod: non-root, read-only root
     filesystem, all capabilities dropped, probes on every long-running container, resources
     set; and that each workload has a NetworkPolicy and a PodDisruptionBudget selecting it,
  5. run `envoy --mode validate` on the Envoy config the chart puts in its ConfigMap.

    python -m deploy.k8s.check_chart                       # defaults + values-production.yaml
    python -m deploy.k8s.check_chart --chart DIR --values a.yaml --values b.yaml

Exit status 1 and one line per finding when anything fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
CHART = HERE / "comfyfleet"
PRODUCTION_VALUES = HERE / "values-production.yaml"
RELEASE = "comfyfleet"
NAMESPACE = "comfyfleet"
# Kinds that are not part of Kubernetes itself (CRDs): their schemas are not bundled.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
WORKLOADS = {"Deployment", "StatefulSet"}


@contextlib.contextmanager
def _quiet_helm() -> Iterator[None]:
    """Helm's Go logger writes to fd 2 (an INFO line per symlinked file, files/envoy.yaml);
    its errors come back as exceptions and lint findings, so fd 2 is muted around the calls."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def kube_version(chart: Path) -> str:
    """The version the chart names: the lower bound of kubeVersion in Chart.yaml (">=1.33.0-0")."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", str(meta.get("kubeVersion", "")))
    if not found:
        raise SystemExit(f"{chart}/Chart.yaml names no kubeVersion")
    major, minor, patch = found.groups()
    return f"{major}.{minor}.{patch or 0}"


def render(chart: Path, values: dict[str, Any]) -> dict[str, str]:
    """Template path -> rendered YAML (raises helm_python.HelmError on a template or schema error)."""
    with _quiet_helm(), helm.Chart.load(str(chart)) as loaded:
        return dict(loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True))


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(rendered):
        if path.endswith(("NOTES.txt", ".tpl")):
            continue
        for doc in yaml.safe_load_all(rendered[path]):
            if doc:
                docs.append(doc)
    return docs


def _name(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def validate_manifests(docs: Iterable[dict[str, Any]], version: str) -> list[str]:
    problems: list[str] = []
    for doc in docs:
        if (doc.get("apiVersion"), doc.get("kind")) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = ".".join(str(p) for p in getattr(err, "path", ()))
            problems.append(f"{_name(doc)}: {where}: {getattr(err, 'message', err)}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{_name(doc)}: no schema for {doc.get('apiVersion')} {doc.get('kind')} in {version}")
    return problems


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def check_pod_rules(docs: Sequence[dict[str, Any]]) -> list[str]:
    """STYLE.md's deploy rules on every workload's pod template."""
    problems: list[str] = []
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    budgets = [d for d in docs if d.get("kind") == "PodDisruptionBudget"]
    for doc in docs:
        if doc.get("kind") not in WORKLOADS:
            continue
        name = _name(doc)
        pod = doc["spec"]["template"]
        labels = pod["metadata"].get("labels", {})
        spec = pod["spec"]
        if spec.get("securityContext", {}).get("runAsNonRoot") is not True:
            problems.append(f"{name}: pod securityContext.runAsNonRoot is not true")
        for c in spec.get("containers", []):
            where = f"{name} container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: capabilities do not drop ALL")
            if not c.get("resources", {}).get("requests"):
                problems.append(f"{where}: no resource requests")
            if c["name"] != "agent" and not (c.get("readinessProbe") and c.get("livenessProbe")):
                problems.append(f"{where}: needs a readiness and a liveness probe")
        if not any(_selects(p["spec"]["podSelector"].get("matchLabels", {}), labels) for p in policies):
            problems.append(f"{name}: no NetworkPolicy selects its pods")
        if doc["kind"] != "Deployment" or labels.get("app.kubernetes.io/component") != "runner":
            if not any(_selects(b["spec"]["selector"].get("matchLabels", {}), labels) for b in budgets):
                problems.append(f"{name}: no PodDisruptionBudget selects its pods")
    return problems


def check_envoy_config(docs: Sequence[dict[str, Any]]) -> list[str]:
    """`envoy --mode validate` on the ConfigMap's envoy.yaml, when envoy is installed."""
    envoy = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
    configs = [d for d in docs if d.get("kind") == "ConfigMap" and "envoy.yaml" in d.get("data", {})]
    if not configs:
        return ["no ConfigMap holds envoy.yaml"]
    if envoy is None:
        return []
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for doc in configs:
            path = Path(tmp) / "envoy.yaml"
            path.write_text(doc["data"]["envoy.yaml"])
            result = subprocess.run([envoy, "--mode", "validate", "-c", str(path), "--log-level", "error"],
                                    capture_output=True, text=True, timeout=60, check=False)
            if result.returncode != 0:
                problems.append(f"{_name(doc)}: envoy --mode validate: {(result.stdout + result.stderr).strip()}")
    return problems


def check(chart: Path, values_files: Sequence[Path | None]) -> list[str]:
    """Every finding for the chart rendered with each values file (None = the chart's defaults)."""
    version = kube_version(chart)
    problems: list[str] = []
    for values_file in values_files:
        label = values_file.name if values_file else "default values"
        values: dict[str, Any] = yaml.safe_load(values_file.read_text()) or {} if values_file else {}
        with _quiet_helm():
            lint = helm.lint(str(chart), values, namespace=NAMESPACE, kube_version=f"v{version}", strict=False)
        problems += [f"[{label}] helm lint: {e}" for e in lint.get("errors") or []]
        try:
            rendered = render(chart, values)
        except helm.HelmError as err:
            problems.append(f"[{label}] render: {err}")
            continue
        docs = manifests(rendered)
        found = validate_manifests(docs, version) + check_pod_rules(docs) + check_envoy_config(docs)
        problems += [f"[{label}] {p}" for p in found]
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Render, lint and validate the comfyfleet chart offline.")
    p.add_argument("--chart", type=Path, default=CHART)
    p.add_argument("--values", type=Path, action="append",
                   help="a values file (repeatable); default: the chart's defaults and values-production.yaml")
    a = p.parse_args(argv)
    helm.disable_logging()
    runs: list[Path | None] = [None, *a.values] if a.values else [None, PRODUCTION_VALUES]
    problems = check(a.chart, runs)
    for line in problems:
        print(line, file=sys.stderr)
    names = ", ".join(v.name if v else "defaults" for v in runs)
    print(f"chart {a.chart.name}: {'FAILED' if problems else 'ok'} (values: {names}; "
          f"kubernetes {kube_version(a.chart)})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
