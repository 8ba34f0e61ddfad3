# kube-xdp: every entry point a person or CI needs. Run as root on Debian 12.
#   make demo   bring the local rig up, deploy the examples, send traffic, print a table
#   make test   the whole suite (unit, kernel, rig e2e)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
RIG_ARGS ?=
export KUBE_XDP_CACHE ?= $(HOME)/.cache/kube-xdp

.PHONY: help deps venv crds rig-up rig-down rig-status demo test test-unit test-kernel test-e2e binaries \
	lab-deps offload-kernel offload-lab bench clean

help:
	@echo "targets: demo test test-unit test-kernel test-e2e rig-up rig-down rig-status crds deps venv binaries clean"

# Debian packages and bcc's kernel-header links (idempotent, fast when done).
deps:
	@bash scripts/install-host-deps.sh

# A venv on Debian's python3 that sees Debian's bcc (system site packages) and our deps.
$(VENV)/.installed: pyproject.toml
	@test -x /usr/bin/python3 || { echo "Debian's /usr/bin/python3 is missing: run 'make deps'"; exit 1; }
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@echo "make venv: installing the Python dependencies into $(VENV) (pip; output in $(VENV)/pip.log)"
	@{ $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q -e '.[test,bench]'; } >$(VENV)/pip.log 2>&1 \
	  || { echo "make venv: pip could not install the project's Python dependencies ($$(grep -m1 -E '^ERROR' $(VENV)/pip.log || tail -1 $(VENV)/pip.log)): full output in $(VENV)/pip.log; check access to PyPI, then rerun 'make venv'" >&2; exit 1; }
	@$(PY) -c "import bcc, kopf, kubernetes, pyroute2, yaml" || { echo "venv cannot import bcc/kopf/kubernetes/pyroute2/yaml"; exit 1; }
	@touch $@

venv: deps $(VENV)/.installed

# kube-apiserver, etcd, kubectl, helm and kxstatus built from the Go modules in build/
# (Kubernetes 1.37), cached in $(KUBE_XDP_CACHE)/bin; only what is missing or stale is built.
# (`rig up` and the demo build the control plane and kubectl themselves when missing.)
binaries: venv
	@$(PY) -m kube_xdp_rig.gobuild

# CRD YAML from kube_xdp_api.schema (the one source), in crds/ and in the chart (tests fail on drift).
# The offload lab: QEMU + virtme-ng, and a small kernel with netdevsim built once from
# Debian's linux source package (cached in $(KUBE_XDP_CACHE)/offload-kernel; ~10 min cold).
lab-deps: venv
	@bash scripts/install-lab-deps.sh $(VENV)

offload-kernel: lab-deps
	@PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash scripts/build-offload-kernel.sh >/dev/null

offload-lab: offload-kernel
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m kube_xdp_lab $(PYTEST_ARGS)

crds: venv
	$(PY) -m kube_xdp_api.schema --write crds/
	$(PY) -m kube_xdp_api.schema --write charts/kube-xdp/crds/

rig-up: venv
	$(PY) -m kube_xdp_rig up $(RIG_ARGS)

rig-down: venv
	$(PY) -m kube_xdp_rig down

rig-status: venv
	$(PY) -m kube_xdp_rig status

demo: venv
	$(PY) -m kube_xdp_rig.demo $(RIG_ARGS)

test-unit: venv binaries
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-kernel: venv
	$(PY) -m pytest tests/kernel $(PYTEST_ARGS)

test-e2e: venv binaries
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

# The whole suite (unit, kernel, rig e2e, faults, the offload lab under QEMU). Tests that
# need the rig start and stop their own instance.
test: venv binaries offload-kernel
	PATH=$(CURDIR)/$(VENV)/bin:$(KUBE_XDP_CACHE)/bin:$$PATH $(PY) -m pytest tests $(PYTEST_ARGS)

bench: venv binaries
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	-$(PY) -m kube_xdp_rig down
	rm -rf $(VENV) .pytest_cache
