# syntax=docker/dockerfile:1
# One image for both kube-xdp components; the Helm chart picks the entry point:
#   kube-xdp-operator   (Deployment)   places programs, aggregates status
#   kube-xdp-agent      (DaemonSet)    compiles with bcc, attaches, pins, reports
#
# Build from the repository root:
#   docker build -t registry.example.com/kube-xdp:0.1.0 .
# No kube-xdp image is published, and this file is not built in the project's CI (no
# container engine there): tests/unit/test_dockerfile.py lints it, checks that the files
# it copies build the project, and that its paths and entry points match the chart.
#
# bcc comes from Debian (python3-bpfcc: the bcc Python module over libbcc, with its
# clang/LLVM), never from PyPI (PyPI's "bcc" is an unrelated package). The project lives
# in a venv made with --system-site-packages so that it imports Debian's bcc.
# bcc needs the node's kernel headers at run time: the chart mounts the host's
# /lib/modules and /usr/src read-only, so the image keeps nothing under those paths.

ARG DEBIAN_IMAGE=debian:bookworm-slim

# --- build: the project and its Python dependencies into /opt/kube-xdp ------------------
FROM ${DEBIAN_IMAGE} AS build
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# What setuptools needs to build the project (pyproject.toml's source roots and readme).
COPY pyproject.toml README.md ./
COPY api/ api/
COPY operator/ operator/
COPY agent/ agent/
COPY rig/ rig/
RUN python3 -m venv --system-site-packages /opt/kube-xdp \
 && /opt/kube-xdp/bin/pip install --no-cache-dir . \
 && /opt/kube-xdp/bin/pip uninstall --yes pip \
 && /opt/kube-xdp/bin/kube-xdp-operator --help > /dev/null \
 && /opt/kube-xdp/bin/kube-xdp-agent --help > /dev/null

# --- runtime: Debian's python3 and bcc, plus the venv ------------------------------------
FROM ${DEBIAN_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Versions come from bookworm (and its security updates) rather than pins: the venv's
# interpreter must be this python3, and python3-bpfcc must match it. `mount` (and
# coreutils' stat, dash's sh) serve the chart's init container that mounts bpffs.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-bpfcc mount \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -c "import bcc"
COPY --from=build /opt/kube-xdp /opt/kube-xdp
ENV PATH=/opt/kube-xdp/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# bcc must be importable from the venv (system site packages), and both entry points run.
RUN python -c "import bcc, kube_xdp_agent, kube_xdp_operator" \
 && kube-xdp-operator --help > /dev/null \
 && kube-xdp-agent --help > /dev/null
LABEL org.opencontainers.image.title="kube-xdp" \
      org.opencontainers.image.description="kube-xdp operator and node agent (XDP programs via bcc)" \
      org.opencontainers.image.licenses="Apache-2.0"
# No USER: the agent must be uid 0 to hold its capabilities; the chart runs the operator
# as uid 65532 (runAsNonRoot) and sets every container's command.
CMD ["kube-xdp-operator", "--help"]
