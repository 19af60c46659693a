#!/bin/sh
# Idempotent: puts the official static helm binary at .tools/helm (see fetch_helm.py for where it comes from).
set -eu
exec "${PYTHON:-python3}" "$(dirname "$0")/fetch_helm.py" "$@"
