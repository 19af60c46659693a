"""The images the chart pulls are the images that get built: `make images` (locally, docker or podman) and
the release workflow (on a tag) both build every image of deploy/images.txt under the names and tag the
chart renders by default. The workflow's own shell steps run here, and `make images` runs with `echo` as its
container engine (a dry run: it prints each build command); no container engine is needed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import CHART, PROFILES, REPO_ROOT, Helm

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "release.yml"
IMAGES_FILE = REPO_ROOT / "deploy" / "images.txt"
DOCKERFILES = sorted(f"deploy/{p.name}" for p in (REPO_ROOT / "deploy").glob("*.Dockerfile"))


def listed_images() -> list[list[str]]:
    """deploy/images.txt: [name, Dockerfile, build args...] per image."""
    return [line.split() for line in IMAGES_FILE.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def app_version() -> str:
    return str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])


def make_images_plan() -> list[str]:
    """The build commands `make images` runs, printed by `echo` standing in for the engine (nothing is built)."""
    done = subprocess.run(["make", "--no-print-directory", "images", "CONTAINER_ENGINE=echo"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.startswith("build ")]


def workflow_step(job: str, step_id: str) -> str:
    steps: list[dict[str, Any]] = yaml.safe_load(WORKFLOW.read_text())["jobs"][job]["steps"]
    return next(s["run"] for s in steps if s.get("id") == step_id)


def run_step(script: str, tmp_path: Path, tag: str) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """A workflow `run:` step in bash, its ${{ }} expressions given their value for a push of `tag`."""
    script = script.replace("${{ inputs.tag || github.ref_name }}", tag)
    assert "${{" not in script, script
    output = tmp_path / "github_output"
    output.write_text("")
    done = subprocess.run(["bash", "-e", "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "GITHUB_OUTPUT": str(output), "GITHUB_REPOSITORY_OWNER": "VoxGrid"})
    values = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return done, values


def test_make_images_builds_every_listed_image_with_its_build_args() -> None:
    builds = make_images_plan()
    expected = [
        " ".join(["build", "-f", file, *(f"--build-arg {arg}" for arg in args),
                  "-t", f"ghcr.io/voxgrid/voxgrid-{name}:{app_version()}", "."])
        for name, file, *args in listed_images()
    ]
    assert builds == expected
    assert {file for _, file, *_ in listed_images()} == set(DOCKERFILES), "every Dockerfile, and only those"


@pytest.mark.parametrize("profile", [None, *PROFILES], ids=["default", *PROFILES])
def test_every_image_the_chart_pulls_is_built(helm: Helm, profile: str | None) -> None:
    built = {build.split(" -t ")[1].split()[0] for build in make_images_plan()}
    objects = helm.render(profile, sets=["gateway.enabled=true", "duplex.enabled=true"])
    pulled = {c["image"] for o in objects if o["kind"] in ("Deployment", "Job")
              for c in o["spec"]["template"]["spec"]["containers"]}
    assert pulled <= built, f"the chart pulls images nothing builds: {sorted(pulled - built)}"


def test_make_images_says_why_without_a_container_engine() -> None:
    done = subprocess.run(["make", "images", "CONTAINER_ENGINE="], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    assert "neither docker nor podman is installed" in done.stderr and "release.yml" in done.stderr


def test_release_workflow_builds_every_dockerfile_at_the_chart_version(tmp_path: Path) -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on:` as true
    assert triggers["push"]["tags"] == ["v*"]
    done, values = run_step(workflow_step("plan", "images"), tmp_path, f"v{app_version()}")
    assert done.returncode == 0, done.stderr
    matrix = json.loads(values["images"])
    assert [[m["name"], m["file"], *m["args"].split()] for m in matrix] == listed_images()
    build = next(s for s in workflow["jobs"]["image"]["steps"] if s.get("uses", "").startswith("docker/build-push"))
    assert build["with"]["file"] == "${{ matrix.image.file }}" and build["with"]["push"] is True
    assert build["with"]["build-args"] == "${{ matrix.image.args }}"
    assert ("${{ env.REGISTRY }}/${{ needs.plan.outputs.owner }}/voxgrid-${{ matrix.image.name }}:"
            "${{ needs.plan.outputs.version }}") in build["with"]["tags"]
    done, values = run_step(workflow_step("plan", "version"), tmp_path, f"v{app_version()}")
    assert done.returncode == 0, done.stderr
    assert values == {"version": app_version(), "owner": "voxgrid"}, "ghcr.io wants a lowercase owner"


def test_release_workflow_refuses_a_tag_the_chart_does_not_pull(tmp_path: Path) -> None:
    done, values = run_step(workflow_step("plan", "version"), tmp_path, "v99.0.0")
    assert done.returncode != 0 and "version" not in values
    assert f"does not match helm/voxgrid/Chart.yaml appVersion {app_version()}" in done.stdout
