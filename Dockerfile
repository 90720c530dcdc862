# syntax=docker/dockerfile:1.7
# The kubetune operator image: kopf + the Kubernetes client + the API models, nothing else
# (no torch, no ray: the trainer has its own image in trainer_image/).
# Build: docker build -t ghcr.io/kubetune/operator:0.1.0 .
# Runs as a non-root user; configure with KUBETUNE_* variables (operator/kubetune/controller/config.py).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Behind a TLS-inspecting proxy: mount its CA bundle and pass the path (used only while building).
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY operator/ operator/
COPY trainer_image/kubetune_trainer/ trainer_image/kubetune_trainer/
# Only the operator extra: its versions are pinned in pyproject.toml (kopf, kubernetes,
# prometheus-client). --no-compile + removing pip keep the layer small.
RUN python -m venv /opt/kubetune \
 && /opt/kubetune/bin/pip install --no-compile ".[operator]" \
 && /opt/kubetune/bin/pip uninstall -y pip setuptools wheel \
 && find /opt/kubetune -name '__pycache__' -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kubetune-operator" \
      org.opencontainers.image.source="https://github.com/kubetune/kubetune" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 kubetune \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin kubetune
COPY --from=build /opt/kubetune /opt/kubetune
ENV PATH=/opt/kubetune/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KUBETUNE_HEALTH_PORT=8080 \
    KUBETUNE_METRICS_PORT=9090
USER 10001:10001
# 8080: liveness (/healthz), 9090: Prometheus metrics (/metrics)
EXPOSE 8080 9090
# The same entry as `kubetune operator`, without importing the CLI's other subcommands.
ENTRYPOINT ["python", "-m", "kubetune.controller.runner"]
