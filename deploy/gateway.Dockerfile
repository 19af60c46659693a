# Edge gateway: browsers and phone providers over HTTP/WebSocket; no model, no GPU; slim Python.
# Build from the repository root:
#   docker build -f deploy/gateway.Dockerfile -t voxgrid-gateway .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY . /src
RUN /opt/venv/bin/pip install "/src[gateway]"

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin voxgrid
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    VOXGRID_GATEWAY_HOST=0.0.0.0 \
    VOXGRID_GATEWAY_PORT=8080 \
    VOXGRID_GATEWAY_METRICS_PORT=9090
EXPOSE 8080 9090
USER 10001:10001
WORKDIR /home/voxgrid
ENTRYPOINT ["voxgrid", "serve", "gateway"]
