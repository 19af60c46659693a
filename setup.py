"""Maps the top-level folders (services/, orchestrator/, gateway/, loadtest/) into the one import namespace
`voxgrid`, so an install puts nothing generic at the top of site-packages. Everything else is in pyproject."""

from setuptools import find_packages, setup

MAPPED = ("services", "orchestrator", "gateway", "loadtest")

packages = find_packages(include=["voxgrid", "voxgrid.*"])
for top in MAPPED:
    packages += [f"voxgrid.{name}" for name in find_packages(include=[top, f"{top}.*"])]

setup(packages=packages, package_dir={f"voxgrid.{top}": top for top in MAPPED})
