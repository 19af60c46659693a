# Orchestrator: no model, no GPU; slim Python. Includes the Kubernetes client for `k8s:` discovery.
# Build from the repository root:
#   docker build -f deploy/orchestrator.Dockerfile -t voxgrid-orchestrator .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY . /src
RUN /opt/venv/bin/pip install "/src[orchestrator,orchestrator-k8s]"

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin voxgrid
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    VOXGRID_ORCHESTRATOR_HOST=0.0.0.0 \
    VOXGRID_ORCHESTRATOR_PORT=50051 \
    VOXGRID_ORCHESTRATOR_METRICS_PORT=9090
EXPOSE 50051 9090
USER 10001:10001
WORKDIR /home/voxgrid
ENTRYPOINT ["voxgrid", "serve", "orchestrator"]
