#!/usr/bin/env bash
# Build the duplex (Moshi) virtualenv. moshi 0.2.13 pins torch<2.10 and huggingface-hub<1.0, which
# would break the transformers the other CPU services use, so duplex gets an environment (and an
# image) of its own. moshi is installed with --no-deps beside torch 2.13 (its runtime works with it;
# `pip check` complains about the pin). Idempotent: re-running only tops the venv up.
#
# usage: deploy/duplex-env.sh [VENV_PATH]   (default: .venv-duplex)
#        TORCH_SPEC=torch==2.13.0 PYTHON=python3.11 deploy/duplex-env.sh /opt/venv
set -euo pipefail

venv="${1:-.venv-duplex}"
python="${PYTHON:-python3.11}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

# Pinned torch only: an unpinned one pulls the newest CUDA wheels (GBs).
"${pip[@]}" "$torch_spec"
"${pip[@]}" --no-deps "moshi==0.2.13"
# Within moshi's own ranges where they exist (only its torch pin is overridden).
"${pip[@]}" "numpy<2.3" "safetensors>=0.4,<0.8" "huggingface-hub<1.0" einops sentencepiece "sphn<0.3" \
    "aiohttp>=3.10.5,<3.12" tqdm
# voxgrid core runtime + test tools.
"${pip[@]}" grpcio grpcio-health-checking grpcio-reflection grpcio-status googleapis-common-protos protobuf \
    prometheus-client pydantic \
    pydantic-settings soxr soundfile "audioop-lts>=0.2; python_version >= '3.13'" \
    pytest pytest-asyncio pytest-timeout

"$venv/bin/python" -c "import moshi.models.loaders, torch; print('duplex env ok: torch', torch.__version__)"
