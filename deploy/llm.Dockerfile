# Language model. vLLM pins its own torch, so one image holds one engine's extra and nothing else:
#   docker build -f deploy/llm.Dockerfile -t voxgrid-llm .                       # vLLM on CUDA (default)
#   docker build -f deploy/llm.Dockerfile -t voxgrid-llm:cpu \
#     --build-arg EXTRAS=llm --build-arg ENGINE=transformers .                   # the CPU profile: transformers
#                                                                                # engine + the packaged GGUF
# Build from the repository root.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
COPY . /src
# llm-vllm: vLLM (pinned in pyproject.toml); llm: the transformers engine with gguf and the packaged model.
ARG EXTRAS=llm-vllm
RUN /opt/venv/bin/pip install "/src[${EXTRAS}]"

FROM ${CUDA_IMAGE}
ARG ENGINE=vllm
ENV DEBIAN_FRONTEND=noninteractive
# vLLM's Triton kernels compile at start-up: they need a C compiler and the Python headers at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-dev gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin voxgrid \
 && mkdir -p /models && chown 10001:10001 /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models/huggingface \
    XDG_CACHE_HOME=/models/cache \
    VLLM_CACHE_ROOT=/models/vllm \
    VOXGRID_LLM_HOST=0.0.0.0 \
    VOXGRID_LLM_PORT=50051 \
    VOXGRID_LLM_METRICS_PORT=9090 \
    VOXGRID_LLM_ENGINE=${ENGINE}
VOLUME ["/models"]
EXPOSE 50051 9090
USER 10001:10001
WORKDIR /home/voxgrid
ENTRYPOINT ["voxgrid", "serve", "llm"]
