# Text to speech (Piper on CPU, Kokoro on CPU or CUDA). Build from the repository root:
#   docker build -f deploy/tts.Dockerfile -t voxgrid-tts .
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
COPY . /src
# Only this service's extras: Piper (GPL-3.0: it ships in this image only) and Kokoro. Both run on
# onnxruntime; the GPU build replaces the CPU one (same module) so device=cuda works.
RUN /opt/venv/bin/pip install "/src[tts,tts-kokoro]" \
 && /opt/venv/bin/pip uninstall -y onnxruntime \
 && /opt/venv/bin/pip install "onnxruntime-gpu>=1.20"

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin voxgrid \
 && mkdir -p /models && chown 10001:10001 /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models/huggingface \
    XDG_CACHE_HOME=/models/cache \
    VOXGRID_TTS_HOST=0.0.0.0 \
    VOXGRID_TTS_PORT=50051 \
    VOXGRID_TTS_METRICS_PORT=9090
VOLUME ["/models"]
EXPOSE 50051 9090
USER 10001:10001
WORKDIR /home/voxgrid
ENTRYPOINT ["voxgrid", "serve", "tts"]
