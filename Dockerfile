# syntax=docker/dockerfile:1
#
# Cargohold container image. Runs the daemon as root in a privileged container:
# it drives runc/crun through conmon and writes the host's cgroup tree
# (see docker-compose.yml for the mounts it needs).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: resolve the pinned dependencies and the package into a venv ----
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, from the lock only, so this layer survives code changes.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

COPY . .
RUN pip install --no-cache-dir --no-deps .

# ---- runtime ----
FROM ${PYTHON_IMAGE}

# runc/crun: OCI runtimes; conmon: per-task shim; busybox-static: the test rootfs;
# golang-github-containers-common: the default seccomp profile (a JSON file);
# containernetworking-plugins, iptables, iproute2: networks (CNI bridge, portmap);
# tini: PID 1 that reaps the conmon processes that daemonize and get reparented
# to it (a zombie conmon would otherwise look alive to the daemon).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        runc crun conmon busybox-static golang-github-containers-common \
        containernetworking-plugins iptables iproute2 tini \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Root dir must be a real volume (overlayfs snapshots cannot sit on the
# container's own overlay root); the state dir holds the unix socket and the
# generated API token, and is normally bind-mounted from the host.
VOLUME ["/var/lib/cargohold", "/run/cargohold"]

EXPOSE 8080

# /healthz is the one TCP endpoint that needs no token.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"]

ENTRYPOINT ["tini", "--", "cargohold"]
# --metrics-public: Prometheus (deploy/prometheus.yml) scrapes /metrics without a token.
CMD ["serve", "--root", "/var/lib/cargohold", "--state", "/run/cargohold", "--listen", "unix:///run/cargohold/cargohold.sock", "--listen", "tcp://0.0.0.0:8080", "--metrics-public"]
