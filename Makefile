# kubetune: `make demo` runs the quick start on this machine, `make test` runs every test tier.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Installs are keyed by pyproject.toml so a changed dependency list reinstalls.
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
export RAY_AUTH_MODE ?= disabled
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/kubetune/torch_extensions
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install demo test test-unit lint manifests controlplane cluster cluster-down bench clean

help:
	@echo "make demo   - create .venv, install, run the quick-start FineTuneJob on this machine"
	@echo "make test   - install everything, build/reuse the test control plane, run all test tiers"
	@echo "make cluster / make cluster-down - a real single-node Kubernetes with KubeRay and kubetune"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	# torch first: deepspeed's build imports it (no build isolation for that one).
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-build-isolation deepspeed==0.19.8
	$(PIP) install -q -e '.[operator,trainer,eval,dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

controlplane:
	hack/controlplane/build.sh

manifests: $(STAMP)
	$(PY) -m kubetune.generate .

demo: $(STAMP)
	$(VENV)/bin/kubetune run -f examples/quickstart-local.yaml --output demo-output

# Lint first (seconds), then every tier; the control plane is built (or reused) up front so a
# cold build shows in the log on its own.
test: lint
	hack/controlplane/build.sh >/dev/null
	$(PY) -m pytest -m "unit or controlplane or trainer or e2e or cluster" tests

# A real single-node Kubernetes on this machine (needs root): control plane, containerd, kubelet,
# kube-proxy, CoreDNS, the real KubeRay operator and the kubetune chart; state in .cluster/.
cluster: $(STAMP)
	$(PY) -m tests.support.cluster up

cluster-down: $(STAMP)
	$(PY) -m tests.support.cluster down

test-unit: $(STAMP)
	$(PY) -m pytest -m unit tests

lint: $(STAMP)
	$(VENV)/bin/ruff check operator trainer_image tests bench
	$(VENV)/bin/ruff format --check operator trainer_image tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache
