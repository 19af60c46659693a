"""Run the real helm binary on the voxgrid chart and validate what it renders.

Shared by the deploy tests: `render()` returns the rendered objects, `helm_fails()` the error helm
prints for values it must refuse, `validate_strict()` checks one object against the Kubernetes
OpenAPI schemas (kubernetes-validate, unknown fields rejected) or, for the CRD kinds the package
has no schema for, against the small structural contract below.
"""

from __future__ import annotations

import importlib.util
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "voxgrid"
PROFILES = ("h100", "a100", "cpu")
RELEASE = "vg"
NAMESPACE = "voice"
# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.30.0", "1.37.0")

# Custom resources: kubernetes-validate has no schema for them; each must carry these spec keys.
CRD_SPEC_KEYS: dict[str, set[str]] = {
    "ServiceMonitor": {"selector", "endpoints"},
    "PrometheusRule": {"groups"},
    "ScaledObject": {"scaleTargetRef", "triggers"},
    "GRPCRoute": {"parentRefs", "rules"},
}
CRD_API_GROUPS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "ScaledObject": "keda.sh/v1alpha1",
    "GRPCRoute": "gateway.networking.k8s.io/v1",
}


def load_fetcher() -> Any:
    """deploy/tools/fetch_helm.py as a module (deploy/ is not a Python package)."""
    path = REPO_ROOT / "deploy" / "tools" / "fetch_helm.py"
    spec = importlib.util.spec_from_file_location("voxgrid_fetch_helm", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Helm:
    """The helm binary, run against the chart."""

    path: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.path), *args], capture_output=True, text=True, timeout=120)

    def _value_args(self, profile: str | None, values: list[Path], sets: list[str]) -> list[str]:
        args: list[str] = []
        if profile:
            args += ["-f", str(CHART / f"values-{profile}.yaml")]
        for path in values:
            args += ["-f", str(path)]
        for item in sets:
            args += ["--set", item]
        return args

    def lint(self, profile: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("lint", "--strict", str(CHART), *self._value_args(profile, [], []))

    def template(
        self, profile: str | None = None, values: list[Path] | None = None, sets: list[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
            *self._value_args(profile, values or [], sets or []),
        )

    def render(
        self, profile: str | None = None, values: list[Path] | None = None, sets: list[str] | None = None
    ) -> list[dict[str, Any]]:
        done = self.template(profile, values, sets)
        assert done.returncode == 0, f"helm template failed:\n{done.stderr}"
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]

    def refusal(
        self, profile: str | None = None, values: list[Path] | None = None, sets: list[str] | None = None
    ) -> str:
        """helm's error for values it must refuse (fails the test if helm renders them)."""
        done = self.template(profile, values, sets)
        assert done.returncode != 0, "helm rendered values it should have refused"
        return done.stderr


def validate_strict(obj: dict[str, Any], kube_version: str) -> None:
    """Raise if obj is not a valid object of its kind (unknown fields rejected)."""
    import kubernetes_validate

    kind = obj["kind"]
    if kind in CRD_SPEC_KEYS:
        assert obj["apiVersion"] == CRD_API_GROUPS[kind], f"{kind} has apiVersion {obj['apiVersion']}"
        assert set(obj["metadata"]) <= {"name", "namespace", "labels", "annotations"}, obj["metadata"]
        missing = CRD_SPEC_KEYS[kind] - set(obj.get("spec", {}))
        assert not missing, f"{kind} {obj['metadata']['name']} lacks spec keys {missing}"
        return
    kubernetes_validate.validate(obj, kube_version, strict=True)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Objects of one kind by name."""
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def component(obj: dict[str, Any]) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def deployments(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Deployments by service (component label)."""
    return {component(d): d for d in objects if d["kind"] == "Deployment"}


def write_values(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    yaml.safe_load(path.read_text())  # a typo in the test itself should fail here, not in helm
    return path
