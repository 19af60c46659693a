# Full-duplex speech (Moshi, slot-batched) on CUDA. moshi pins an older torch than the one voxgrid
# runs, so this image follows the recipe in deploy/duplex-env.sh: torch 2.13.0, then moshi with
# --no-deps and its runtime dependencies. Never in the same environment as vLLM.
# Build from the repository root:
#   docker build -f deploy/duplex.Dockerfile -t voxgrid-duplex .
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
COPY . /src
# The recipe (torch 2.13.0, moshi --no-deps and its pinned runtime deps) lives in one place, shared with
# local installs; it tops up the existing venv.
RUN TORCH_SPEC=torch==2.13.0 bash /src/deploy/duplex-env.sh /opt/venv
# voxgrid itself without dependency resolution: the duplex extra would pull moshi's torch pin back in.
RUN /opt/venv/bin/pip install --no-deps /src

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# moshi's torch.compile builds Triton kernels at start-up: they need a C compiler and the Python headers.
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
    VOXGRID_DUPLEX_HOST=0.0.0.0 \
    VOXGRID_DUPLEX_PORT=50051 \
    VOXGRID_DUPLEX_METRICS_PORT=9090 \
    VOXGRID_DUPLEX_DEVICE=cuda
VOLUME ["/models"]
EXPOSE 50051 9090
USER 10001:10001
WORKDIR /home/voxgrid
ENTRYPOINT ["voxgrid", "serve", "duplex"]
