"""Write each service's settings model into the chart's values.schema.json (`$defs/<svc>Settings`).

Every knob has one home, the service's pydantic settings model: `voxgrid serve <svc> --field-name`,
`VOXGRID_<SVC>_FIELD_NAME` and the Helm value `<svc>.settings.fieldName` all come from it. This script
turns the model's fields into the strict JSON schema helm checks values against, so a misspelt or
mistyped setting is refused before anything reaches a cluster. Fields the chart sets itself (ports,
session limit, drain grace, auth, TLS, logs, backend discovery) are left out: they have their own values.

    python deploy/tools/chart_settings.py                 # every service found in this tree
    python deploy/tools/chart_settings.py --check         # exit 1 if the committed schema is stale
    python deploy/tools/chart_settings.py --root stt=/work/wt-stt   # a service from another checkout

Each model is imported in a child process (its own sys.path), so services from different checkouts and
heavy optional imports never mix.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = REPO_ROOT / "helm" / "voxgrid" / "values.schema.json"
SERVICES = ("stt", "llm", "tts", "duplex", "orchestrator", "gateway")

# Set by the chart from its own values; a settings map must not set them a second time.
CHART_MANAGED = {
    "host", "port", "metrics_port", "max_sessions", "drain_grace_s", "auth_tokens", "auth_token_file",
    "tls_cert_file", "tls_key_file", "log_level", "log_format", "health_port",
    "stt_backends", "llm_backends", "tts_backends", "duplex_backends", "backend_token",
    "orchestrator_backends", "orchestrator_token",
    # Mounted by the chart from llm.adapters, tts.voices and orchestrator.profiles.
    "adapters_dir", "voices_dir", "profiles_file",
    # Set by the chart from gateway.webrtc (ports, public address, STUN/TURN and the TURN Secret).
    "webrtc_udp_port_min", "webrtc_udp_port_max", "webrtc_public_ip", "webrtc_ice_servers",
    "webrtc_client_ice_servers", "webrtc_turn_username", "webrtc_turn_credential", "webrtc_turn_credential_file",
    "webrtc_turn_shared_secret_file", "webrtc_turn_credential_ttl_s",
}

# Runs in the child: find the ServerSettings subclass of the module and print its JSON schema.
_DUMP = """
import importlib, json, sys
from voxgrid.config import ServerSettings
svc, module = sys.argv[1], sys.argv[2]
mod = importlib.import_module(module)
prefix = f"VOXGRID_{svc.upper()}_"
found = [c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, ServerSettings)
         and c is not ServerSettings and c.model_config.get("env_prefix") == prefix]
if len({id(c) for c in found}) != 1:
    sys.exit(f"{module}: expected one settings class with env_prefix {prefix}, found {len(found)}")
print(json.dumps(found[0].model_json_schema()))
"""


def settings_module(svc: str) -> str:
    return f"{svc}.settings" if svc in ("orchestrator", "gateway") else f"services.{svc}.settings"


def settings_file(svc: str, root: Path) -> Path:
    return root.joinpath(*settings_module(svc).split(".")).with_suffix(".py")


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def model_schema(svc: str, root: Path) -> dict[str, Any]:
    """The pydantic JSON schema of svc's settings model as found under root."""
    done = subprocess.run(
        [sys.executable, "-c", _DUMP, svc, settings_module(svc)],
        cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"could not load {settings_module(svc)} from {root}:\n{done.stderr.strip()}")
    return json.loads(done.stdout)


def values_schema(svc: str, model: dict[str, Any]) -> dict[str, Any]:
    """The strict values schema of `<svc>.settings`: camelCase keys, pydantic's types and bounds."""
    properties: dict[str, Any] = {}
    for name, field in model["properties"].items():
        if name in CHART_MANAGED:
            continue
        prop = {k: v for k, v in field.items() if k not in ("title", "format")}
        if "anyOf" in prop:
            prop["anyOf"] = [{k: v for k, v in alt.items() if k != "format"} for alt in prop["anyOf"]]
        env = f"VOXGRID_{svc.upper()}_{name.upper()}"
        prop["description"] = f"{field.get('description', '').rstrip('.')}. [env {env}]".lstrip(". ")
        properties[camel(name)] = prop
    return {
        "type": "object",
        "additionalProperties": False,
        "description": f"VOXGRID_{svc.upper()}_* settings of `voxgrid serve {svc}` (empty values keep the default).",
        "properties": properties,
    }


def generate(roots: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """`$defs` entries for every service whose settings module exists under its root."""
    out = {}
    for svc in SERVICES:
        root = roots.get(svc, REPO_ROOT)
        if settings_file(svc, root).exists():
            out[f"{svc}Settings"] = values_schema(svc, model_schema(svc, root))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", action="append", default=[], metavar="SVC=PATH",
                        help="load this service's settings from another checkout")
    parser.add_argument("--check", action="store_true", help="only report whether the schema is current")
    args = parser.parse_args()
    roots = {k: Path(v).resolve() for k, v in (item.split("=", 1) for item in args.root)}
    schema = json.loads(SCHEMA.read_text())
    generated = generate(roots)
    stale = [name for name, sub in generated.items() if schema["$defs"].get(name) != sub]
    if args.check:
        for name in stale:
            print(f"{SCHEMA.relative_to(REPO_ROOT)}: $defs/{name} is stale; run {Path(__file__).name}")
        return 1 if stale else 0
    schema["$defs"].update(generated)
    SCHEMA.write_text(json.dumps(schema, indent=2) + "\n")
    print(f"wrote {', '.join(sorted(generated))} into {SCHEMA.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
