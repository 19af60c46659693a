#!/usr/bin/env bash
# Build the three GPU virtualenvs `make test-gpu` and `make bench-gpu` run in. They cannot share one:
# vLLM pins its own torch and transformers, moshi pins an older torch than the other services.
#
#   .venv-gpu         STT, TTS and the transformers LLM engine: torch's CUDA build, faster-whisper with
#                     pip's cuBLAS for CTranslate2, onnxruntime-gpu in place of onnxruntime (Kokoro).
#   .venv-gpu-vllm    vLLM's CUDA build (pinned), peft for LoRA adapters, voxgrid's core runtime.
#   .venv-gpu-duplex  deploy/duplex-env.sh with torch's CUDA build (moshi, torch.compile, CUDA graphs).
#
# Every version is pinned: an unpinned torch or vLLM pulls whatever is newest (GBs of CUDA wheels that
# need not match each other). Idempotent: a venv whose stamp is newer than this script is kept.
#
# usage: deploy/gpu-envs.sh [main|vllm|duplex]...   (default: all three)
#        deploy/gpu-envs.sh --help
#   DRY_RUN=1                  print the commands instead of running them (works without a GPU)
#   PYTHON=python3.11          interpreter the venvs are made from
#   TORCH_VERSION=2.13.0       torch of the main and duplex venvs (vLLM brings its own)
#   TORCH_INDEX_URL=...        extra index with torch's CUDA builds, e.g. https://download.pytorch.org/whl/cu128;
#                              unset = the configured index (PyPI's Linux torch is the CUDA build)
#   GPU_VENV, VLLM_GPU_VENV, DUPLEX_GPU_VENV   where the venvs go
set -euo pipefail

script="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$script")/.."
python="${PYTHON:-python3.11}"
torch_version="${TORCH_VERSION:-2.13.0}"
vllm_version="${VLLM_VERSION:-0.33.0}"
onnxruntime_gpu_version="${ONNXRUNTIME_GPU_VERSION:-1.31.1}"
cublas_cu12_version="${CUBLAS_CU12_VERSION:-12.9.3.13}"
peft_version="${PEFT_VERSION:-0.21.2}"
main_venv="${GPU_VENV:-.venv-gpu}"
vllm_venv="${VLLM_GPU_VENV:-.venv-gpu-vllm}"
duplex_venv="${DUPLEX_GPU_VENV:-.venv-gpu-duplex}"
test_tools=(pytest pytest-asyncio pytest-timeout)

dry_run="${DRY_RUN:-}"

run() {  # run CMD...: run it, or print it under DRY_RUN
    if [[ -n "$dry_run" ]]; then
        printf '%q ' "$@"
        echo
    else
        "$@"
    fi
}

fresh() {  # fresh VENV: true when VENV was built by this version of the script
    [[ -z "$dry_run" && -f "$1/.gpu-installed" && "$1/.gpu-installed" -nt "$script" ]]
}

make_venv() {
    [[ -x "$1/bin/python" ]] || run "$python" -m venv "$1"
    run "$1/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
}

pip_in() {  # pip_in VENV ARGS...: pip install into VENV
    local venv="$1"
    shift
    run "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
}

torch_cuda() {  # torch_cuda VENV: torch==TORCH_VERSION, CUDA build, from TORCH_INDEX_URL when set
    local args=("torch==$torch_version")
    [[ -n "${TORCH_INDEX_URL:-}" ]] && args+=(--extra-index-url "$TORCH_INDEX_URL")
    pip_in "$1" "${args[@]}"
}

check_torch_cuda() {  # check_torch_cuda VENV: fail when pip chose a CPU build (a local wheel store can)
    [[ -z "$dry_run" ]] || return 0
    "$1/bin/python" - <<'EOF'
import sys

import torch

if not torch.version.cuda:
    sys.exit(f"torch {torch.__version__} in {sys.prefix} is a CPU build: set TORCH_INDEX_URL to an index with "
             "its CUDA build (https://download.pytorch.org/whl/cuXYZ) and run deploy/gpu-envs.sh again")
print(f"{sys.prefix}: torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"device visible: {torch.cuda.is_available()}")
EOF
}

check_toolchain() {  # Triton (moshi's torch.compile, vLLM's kernels) compiles C at run time
    [[ -z "$dry_run" ]] || return 0
    local include
    include="$("$python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")"
    if ! command -v cc >/dev/null || [[ ! -f "$include/Python.h" ]]; then
        echo "Triton (torch.compile, vLLM) builds C extensions at run time: it needs a C compiler (cc) and" \
            "the headers of $python ($include/Python.h), e.g. apt-get install gcc python3-dev" >&2
        exit 1
    fi
}

build_main() {
    local venv="$main_venv"
    fresh "$venv" && return
    echo "== $venv: torch $torch_version (CUDA), STT/LLM/TTS, onnxruntime-gpu $onnxruntime_gpu_version"
    make_venv "$venv"
    torch_cuda "$venv"
    pip_in "$venv" -e ".[cpu,tts-kokoro,dev]"
    # onnxruntime-gpu is the same module as onnxruntime: the CPU one goes first or it shadows the GPU one.
    # Its [cuda,cudnn] extras install the CUDA runtime libraries its CUDA provider loads.
    run "$venv/bin/python" -m pip uninstall --quiet -y onnxruntime
    pip_in "$venv" "onnxruntime-gpu[cuda,cudnn]==$onnxruntime_gpu_version"
    # CTranslate2 (faster-whisper) dlopens libcublas.so.12; pip's copy goes on LD_LIBRARY_PATH at run time
    # (python -m voxgrid.gpu --cuda-lib-path).
    pip_in "$venv" "nvidia-cublas-cu12==$cublas_cu12_version"
    check_torch_cuda "$venv"
    run "$venv/bin/python" -c "import onnxruntime as o; p = o.get_available_providers(); \
assert 'CUDAExecutionProvider' in p, p; print('onnxruntime', o.__version__, p)"
    run touch "$venv/.gpu-installed"
}

build_vllm() {
    local venv="$vllm_venv"
    fresh "$venv" && return
    echo "== $venv: vllm $vllm_version (its own torch and transformers), peft $peft_version"
    make_venv "$venv"
    # One resolve: vLLM's pins win; voxgrid's core dependencies (no extras) fit around them.
    pip_in "$venv" "vllm==$vllm_version" "peft==$peft_version" -e . "${test_tools[@]}"
    check_torch_cuda "$venv"
    run "$venv/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
    run touch "$venv/.gpu-installed"
}

build_duplex() {
    local venv="$duplex_venv"
    fresh "$venv" && return
    echo "== $venv: moshi with torch $torch_version (CUDA)"
    local env=(env "TORCH_SPEC=torch==$torch_version" "PYTHON=$python")
    [[ -n "${TORCH_INDEX_URL:-}" ]] && env+=("PIP_EXTRA_INDEX_URL=$TORCH_INDEX_URL")
    run "${env[@]}" bash deploy/duplex-env.sh "$venv"
    # voxgrid itself without dependency resolution: the duplex extra would pull moshi's torch pin back in.
    pip_in "$venv" --no-deps -e .
    check_torch_cuda "$venv"
    run touch "$venv/.gpu-installed"
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -euo/p' "$script" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(main vllm duplex)
for target in "${targets[@]}"; do
    case "$target" in
        main | vllm | duplex) ;;
        *) echo "unknown environment '$target': main, vllm or duplex" >&2; exit 2 ;;
    esac
done
check_toolchain
for target in "${targets[@]}"; do
    "build_$target"
done
