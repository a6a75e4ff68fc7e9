# Cargohold's two commands: `make run` and `make test`. Each installs what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint openapi system-packages test-packages bench bench-peers clean

# The runtime's Debian packages (runc, crun, conmon; busybox-static for the test rootfs;
# golang-github-containers-common for the default seccomp profile, a file, not a binary;
# containernetworking-plugins, files in /usr/lib/cni, iptables and iproute2 for networks).
RUNTIME_BINARIES := runc crun conmon busybox iptables iptables-save ip
RUNTIME_FILES := /usr/share/containers/seccomp.json /usr/lib/cni/bridge /usr/lib/cni/host-local \
  /usr/lib/cni/portmap /usr/lib/cni/loopback
RUNTIME_PACKAGES := runc crun conmon busybox-static golang-github-containers-common containernetworking-plugins \
  iptables iproute2

$(STAMP): requirements.lock requirements-test.lock pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null \
	  || { apt-get update && apt-get install -y python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-test.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

## system-packages: install the runtime from Debian when missing (needs root)
system-packages:
	@missing=$$(for b in $(RUNTIME_BINARIES); do command -v $$b >/dev/null || echo $$b; done; \
	  for f in $(RUNTIME_FILES); do [ -f $$f ] || echo $$f; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing $(RUNTIME_PACKAGES) (missing: $$missing)"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(RUNTIME_PACKAGES); \
	fi

## test-packages: also a real Prometheus, which the integration test scrapes with, and the
## image tests' registry (docker-registry), image tools (skopeo, umoci) and htpasswd -B (apache2-utils)
IMAGE_TEST_BINARIES := docker-registry skopeo umoci htpasswd
IMAGE_TEST_PACKAGES := docker-registry skopeo umoci apache2-utils
# docker-registry's postinst enables and starts docker-registry.service (a registry on :5000)
# under systemd; the tests start registries of their own, so it is stopped and disabled again.
test-packages: system-packages
	@command -v prometheus >/dev/null || { apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; }
	@command -v openssl >/dev/null || { apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssl; }  # tests/api/test_tls.py
	@command -v tmux >/dev/null || { apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tmux; }  # tests/client: run -it
	@command -v chromium >/dev/null || { apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }  # tests/ui: the web view
	@missing=$$(for b in $(IMAGE_TEST_BINARIES); do command -v $$b >/dev/null || echo $$b; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing $(IMAGE_TEST_PACKAGES) (missing: $$missing)"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(IMAGE_TEST_PACKAGES); \
	  if [ -d /run/systemd/system ] && systemctl is-active --quiet docker-registry.service; then \
	    echo "the docker-registry package started docker-registry.service: stopping and disabling it"; \
	    systemctl disable --now docker-registry.service; \
	  fi; \
	fi

## run: start the daemon on its defaults (SQLite under /var/lib/cargohold, unix:///run/cargohold/cargohold.sock)
run: $(STAMP) system-packages
	exec $(BIN)/cargohold serve $(ARGS)

## test: lint, type-check, OpenAPI drift check, then every test
test: $(STAMP) test-packages lint
	$(BIN)/python -m tests.halves $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check app tests bench
	$(BIN)/mypy

## bench: the workloads against the physical floor (bare runc run); writes bench/results.json
## (test-packages: W6 pulls from a local docker-registry, its images pushed with skopeo)
bench: $(STAMP) test-packages
	$(BIN)/python -m bench.run $(BENCH_ARGS)

## bench-peers: W1, W3, W5, W6 through Cargohold and a containerd of its own, W7, W8 and Podman; writes bench/results-peers.json
# Installs Debian's containerd when missing. Its postinst enables containerd.service and
# starts it only under systemd (/run/systemd/system); if it did, that service is stopped
# and disabled again: the harness runs its own containerd on private paths.
bench-peers: $(STAMP) test-packages
	@if ! command -v containerd >/dev/null || ! command -v ctr >/dev/null; then \
	  echo "installing containerd (for bench-peers)"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends containerd; \
	  if [ -d /run/systemd/system ] && systemctl is-active --quiet containerd.service; then \
	    echo "the containerd package started containerd.service: stopping and disabling it"; \
	    systemctl disable --now containerd.service; \
	  fi; \
	fi
	@if ! command -v podman >/dev/null; then \
	  echo "installing podman (for bench-peers W7, W8; daemonless, run on private paths)"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends podman; \
	fi
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-bench.lock
	$(BIN)/python -m bench.peers $(BENCH_ARGS)

## openapi: regenerate openapi/openapi.json from the app (commit the result)
openapi: $(STAMP)
	$(BIN)/cargohold openapi > openapi/openapi.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
