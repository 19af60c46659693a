"""Create the release's auth Secret in the cluster once, with random tokens (the chart's `auth` hook Job).

A token rendered by helm would change on every render where helm cannot read the cluster (Argo CD, Flux
dry runs, `helm template`), and every change restarts pods and locks clients out. So the token is made
here, in the cluster, before install or upgrade: an existing Secret is kept as it is and only gets the
keys it lacks (e.g. `gateway-token` when the gateway is turned on later). Standard library only: it runs
in the orchestrator image against the API server with the Job's service account.
"""

import base64
import json
import os
import secrets
import ssl
import urllib.error
import urllib.request

ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def api(method: str, path: str, body: dict | None = None) -> dict | None:
    """One API call; None for 404."""
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    with open(f"{ACCOUNT}/token") as f:
        token = f.read().strip()
    content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
    request = urllib.request.Request(
        f"https://{host}:{port}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=f"{ACCOUNT}/ca.crt"),
                                    timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise SystemExit(f"{method} {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from exc


def missing_keys(current: dict[str, str], gateway: bool, backends: bool) -> dict[str, str]:
    """The keys to add, as plain strings: what the release needs and the Secret lacks."""
    added: dict[str, str] = {}
    tokens = current.get("tokens", "")
    if not tokens:
        tokens = secrets.token_urlsafe(30)
        added["tokens"] = tokens
    if gateway and "gateway-token" not in current:
        added["gateway-token"] = secrets.token_urlsafe(30)
        added["tokens"] = tokens + "\n" + added["gateway-token"]  # the orchestrator accepts the gateway
    if backends and "backend-token" not in current:
        added["backend-token"] = secrets.token_urlsafe(30)
    return added


def main() -> None:
    with open(f"{ACCOUNT}/namespace") as f:
        namespace = f.read().strip()
    name = os.environ["SECRET_NAME"]
    path = f"/api/v1/namespaces/{namespace}/secrets"
    existing = api("GET", f"{path}/{name}")
    current = {k: base64.b64decode(v).decode() for k, v in ((existing or {}).get("data") or {}).items()}
    added = missing_keys(current, os.environ.get("GATEWAY") == "true", os.environ.get("BACKENDS") == "true")
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in added.items()}
    if existing is None:
        labels = json.loads(os.environ.get("LABELS", "{}"))
        api("POST", path, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": encoded,
                           "metadata": {"name": name, "namespace": namespace, "labels": labels}})
        print(f"created Secret {name} with {', '.join(sorted(added))}")
    elif added:
        api("PATCH", f"{path}/{name}", {"data": encoded})
        print(f"added {', '.join(sorted(added))} to Secret {name}")
    else:
        print(f"Secret {name} has every key the release needs: kept as it is")


if __name__ == "__main__":
    main()
