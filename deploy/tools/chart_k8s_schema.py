"""Write the Kubernetes object schemas the chart's values use into values.schema.json (`$defs/io.k8s.*`).

Values such as `podSecurityContext`, `<svc>.tolerations` or `<svc>.extraVolumes` are copied into the pods
as they are. Checked only as "an object", a typo (`runAsUser: "many"`, `tolerations: [{efect: ...}]`) would
render fine and fail at the API server, after the release is half applied. So the values schema refers to
the Kubernetes OpenAPI definitions of those objects, strict (unknown fields refused), taken from the
schemas `kubernetes-validate` ships, and helm refuses such values at `helm template`.

    python deploy/tools/chart_k8s_schema.py            # rewrite the io.k8s.* definitions
    python deploy/tools/chart_k8s_schema.py --check    # exit 1 if the committed schema is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = REPO_ROOT / "helm" / "voxgrid" / "values.schema.json"
# The newest schemas kubernetes-validate ships: a field a newer cluster knows is not refused here.
KUBE_VERSION = "1.37.0"
PREFIX = "io.k8s."
# The objects values may carry; everything they reference comes along.
ROOTS = (
    "io.k8s.api.core.v1.PodSecurityContext",
    "io.k8s.api.core.v1.SecurityContext",
    "io.k8s.api.core.v1.EnvVar",
    "io.k8s.api.core.v1.Volume",
    "io.k8s.api.core.v1.VolumeMount",
    "io.k8s.api.core.v1.Toleration",
    "io.k8s.api.core.v1.TopologySpreadConstraint",
    "io.k8s.api.core.v1.Probe",
    "io.k8s.api.core.v1.Affinity",
    "io.k8s.api.core.v1.LocalObjectReference",
    "io.k8s.api.networking.v1.NetworkPolicyPeer",
)
# Prose and Kubernetes' own annotations are dropped: helm needs the structure, people read the API docs.
DROPPED_KEYS = ("description", "format")
_REF = re.compile(r'"\$ref": "#/\$defs/([\w.\-]+)"')


def source_definitions() -> dict[str, Any]:
    """The strict OpenAPI definitions of KUBE_VERSION from the installed kubernetes-validate."""
    import kubernetes_validate

    path = (Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
            / f"v{KUBE_VERSION}-local-strict" / "_definitions.json")
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: install a kubernetes-validate that ships Kubernetes {KUBE_VERSION}")
    return json.loads(path.read_text())["$defs"]


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items()
                if k not in DROPPED_KEYS and not k.startswith("x-kubernetes")}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def generate(defs: dict[str, Any]) -> dict[str, Any]:
    """The roots and every definition they reach, by name."""
    out: dict[str, Any] = {}
    pending = list(ROOTS)
    while pending:
        name = pending.pop()
        if name in out:
            continue
        out[name] = _strip(defs[name])
        pending += _REF.findall(json.dumps(defs[name]))
    return dict(sorted(out.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the schema is current")
    args = parser.parse_args()
    schema = json.loads(SCHEMA.read_text())
    generated = generate(source_definitions())
    current = {k: v for k, v in schema["$defs"].items() if k.startswith(PREFIX)}
    if args.check:
        if current != generated:
            print(f"{SCHEMA.relative_to(REPO_ROOT)}: $defs/{PREFIX}* is stale; run {Path(__file__).name}")
            return 1
        return 0
    schema["$defs"] = {k: v for k, v in schema["$defs"].items() if not k.startswith(PREFIX)} | generated
    SCHEMA.write_text(json.dumps(schema, indent=2) + "\n")
    print(f"wrote {len(generated)} Kubernetes definitions into {SCHEMA.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
