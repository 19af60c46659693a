# Speech to text (faster-whisper on CUDA). Build from the repository root:
#   docker build -f deploy/stt.Dockerfile -t voxgrid-stt .
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
COPY . /src
# Only this service's extra: CTranslate2 + faster-whisper, nothing of the LLM or TTS stacks.
RUN /opt/venv/bin/pip install "/src[stt]"
# Semantic end of turn: smart-turn v3 (BSD-2, Daily) extracted from the pipecat-ai wheel (pip download
# --no-deps, sha256-checked), with its license; baked in so no replica downloads it at start.
RUN VOXGRID_CACHE_DIR=/opt/voxgrid-cache /opt/venv/bin/python -m voxgrid.services.stt.turn_model

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin voxgrid \
 && mkdir -p /models && chown 10001:10001 /models
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/voxgrid-cache/models/smart-turn-v3.2 /opt/smart-turn
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models/huggingface \
    XDG_CACHE_HOME=/models/cache \
    VOXGRID_STT_HOST=0.0.0.0 \
    VOXGRID_STT_PORT=50051 \
    VOXGRID_STT_METRICS_PORT=9090 \
    VOXGRID_STT_DEVICE=cuda \
    VOXGRID_STT_TURN_MODEL=/opt/smart-turn/smart-turn-v3.2-cpu.onnx \
    VOXGRID_STT_COMPUTE_TYPE=float16
VOLUME ["/models"]
EXPOSE 50051 9090
USER 10001:10001
WORKDIR /home/voxgrid
ENTRYPOINT ["voxgrid", "serve", "stt"]
