"""Fill the model cache before a voxgrid service starts (the chart's `fetch-model` init container).

A hub id is fetched with huggingface_hub into its own directory, /models/hub/<org>/<name>/<revision>,
limited to the files the engine loads, and the server is pointed at that directory: the revision pin
holds, and a server running with HF_HUB_OFFLINE=1 never needs the hub. Extra files (weights published
outside the hub) are fetched by URL. With HF_HUB_OFFLINE=1 nothing is fetched: a missing model fails
here with what to do, not later inside the engine.
"""

import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

MARKER = ".voxgrid-complete"


def fetch_hub_model(ref: str, target: Path, offline: bool) -> None:
    if (target / MARKER).exists() and offline:
        print(f"{ref}: in the cache at {target}")
        return
    if offline:
        sys.exit(f"HF_HUB_OFFLINE is set but {ref} is not in the cache at {target}: fill the cache first "
                 f"(run once with modelCache.offline=false) or turn modelCache.offline off")
    from huggingface_hub import snapshot_download

    path = snapshot_download(
        ref,
        revision=os.environ.get("MODEL_REVISION") or None,
        allow_patterns=json.loads(os.environ.get("ALLOW_PATTERNS", "[]")) or None,
        ignore_patterns=json.loads(os.environ.get("IGNORE_PATTERNS", "[]")) or None,
        local_dir=target,
    )
    (target / MARKER).touch()
    print(f"{ref}: cached at {path}")


def fetch_file(url: str, dest: Path, offline: bool) -> None:
    if dest.exists():
        print(f"{dest}: in the cache")
        return
    if offline:
        sys.exit(f"HF_HUB_OFFLINE is set but {dest} is missing: put it there or turn modelCache.offline off")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)
    partial.rename(dest)  # a pod killed mid-download leaves no half file under the real name
    print(f"{dest}: fetched from {url}")


def main() -> None:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    root = Path(os.environ.get("MODELS_ROOT", "/models"))
    ref = os.environ.get("MODEL_REF", "")
    if ref:
        fetch_hub_model(ref, Path(os.environ["MODEL_DIR"]), offline)
    for item in json.loads(os.environ.get("EXTRA_FILES", "[]")):
        fetch_file(item["url"], root / item["path"], offline)


if __name__ == "__main__":
    main()
