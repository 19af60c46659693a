"""The helm binary for the deploy tests: fetched once into .tools/ (idempotent), else skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.deploy.chart import Helm, load_fetcher


@pytest.fixture(scope="session")
def helm() -> Helm:
    explicit = os.environ.get("VOXGRID_HELM")
    if explicit:
        return Helm(Path(explicit))
    fetcher = load_fetcher()
    try:
        return Helm(fetcher.fetch_helm())
    except Exception as exc:  # no registry, no x86_64 Linux: the chart cannot be rendered here
        pytest.skip(f"helm could not be fetched ({type(exc).__name__}: {exc}); run deploy/tools/fetch-helm.sh")
