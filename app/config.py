"""Daemon settings: directories, listeners, limits and intervals.

A `Settings` value is built once by the CLI (or a test) and passed down; nothing reads
it from a global, so a test can build as many apps as it likes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ROOT = Path("/var/lib/cargohold")
DEFAULT_STATE = Path("/run/cargohold")
DEFAULT_LISTEN = "unix:///run/cargohold/cargohold.sock"


@dataclass(frozen=True)
class Listener:
    """One address to serve on: a unix socket path or a TCP host and port."""

    url: str
    path: Path | None = None
    host: str | None = None
    port: int | None = None

    @property
    def is_tcp(self) -> bool:
        return self.host is not None

    @classmethod
    def parse(cls, url: str) -> Listener:
        """Parse `unix:///abs/path.sock` or `tcp://host:port`; raise ValueError otherwise."""
        if url.startswith("unix://"):
            path = url.removeprefix("unix://")
            if not path.startswith("/"):
                raise ValueError(f"unix listener needs an absolute path: {url!r}")
            return cls(url=url, path=Path(path))
        if url.startswith("tcp://"):
            hostport = url.removeprefix("tcp://")
            host, sep, port = hostport.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(f"tcp listener needs host:port: {url!r}")
            return cls(url=url, host=host.strip("[]"), port=int(port))
        raise ValueError(f"listener must start with unix:// or tcp://: {url!r}")


@dataclass(frozen=True)
class Settings:
    """Everything the daemon is configured with."""

    root: Path = DEFAULT_ROOT
    state: Path = DEFAULT_STATE
    listeners: tuple[Listener, ...] = field(
        default_factory=lambda: (Listener.parse(DEFAULT_LISTEN),)
    )
    # The bearer token TCP listeners require (None: generated into <state>/token); at
    # least 16 characters, or the daemon does not start (main.MIN_TOKEN_LENGTH).
    token_file: Path | None = None
    metrics_public: bool = False
    # TLS for TCP listeners (unix ones stay plain): the server's certificate chain and key,
    # both or neither. With a client CA, TCP clients need a certificate it signed (as
    # Docker's --tlsverify), and the token as well.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # None: overlayfs where the kernel has it, else native.
    snapshotter: str | None = None
    # Request bodies above this are refused with 413 (DESIGN: 1 MiB).
    max_body_bytes: int = 1024 * 1024
    # A tar streamed to /snapshots/import may be this large, counted on the body and again
    # once decompressed (a gzip bomb stops here).
    import_max_bytes: int = 8 * 1024**3
    # Entries one imported layer may make (members plus the parent dirs they imply); about
    # 100 bytes of memory each while it runs. Real layers hold at most a few 100,000 files.
    import_max_entries: int = 1_000_000
    # Seconds an import's upload may send nothing before it is refused and cleaned up.
    import_idle_timeout: float = 60.0
    # Members an image archive (POST /images/import) may hold; the name and offsets of each
    # are kept in memory while it is imported. A docker save has about 4 per layer.
    import_archive_max_members: int = 10_000
    # Threads extracting imports (their own executor: stalled uploads never hold the
    # default executor's threads); further imports wait for one.
    import_concurrency: int = 4
    # Registries (host:port, as in image references) spoken to over plain HTTP, as Docker's
    # --insecure-registry; every other registry needs TLS.
    insecure_registries: tuple[str, ...] = ()
    # A directory of CA certificates (*.crt, *.pem) trusted for registries, beside the system's.
    registry_ca_dir: Path | None = None
    # conmon truncates a task's log when it reaches this size.
    log_max_bytes: int = 16 * 1024 * 1024
    # Exits kept per namespace for `wait` after the fact: the newest N, none older than the age.
    exit_retention: int = 10_000
    exit_max_age_seconds: float = 24 * 3600
    # Seconds between two polls of every task's cgroup by the monitor.
    monitor_interval: float = 1.0
    # Where runc, crun and conmon are looked up (None: $PATH).
    runtime_path: str | None = None
    # Host directories a container spec may bind-mount from.
    allowed_bind_roots: tuple[Path, ...] = ()
    # Spec policy (DESIGN "Spec policy"): True lifts it for every namespace, as if each
    # were labelled cargohold.policy=privileged.
    allow_privileged: bool = False
    # The default seccomp profile, in Docker's format. None: /usr/share/containers/seccomp.json
    # (Debian's golang-github-containers-common); when that is missing, task create is 503.
    # A file named here must load, or the daemon does not start.
    seccomp_profile: Path | None = None
    # Events kept in the store; older ones are pruned as new ones arrive.
    event_retention: int = 100_000
    # Events buffered per SSE subscriber before it falls back to reading the store.
    subscriber_queue_size: int = 1024
    # Seconds between SSE heartbeat comments on an idle stream.
    heartbeat_seconds: float = 15.0
    # Seconds a frozen SSE client may block one send before it is dropped.
    sse_send_timeout: float = 30.0
    # Limits (README "Limits"), issue 12. Seconds a request may take to send its headers,
    # from its first byte (or from the connection): past it, 408 and the connection closes.
    header_timeout: float = 10.0
    # An unfinished request head larger than this is refused with 431.
    max_header_bytes: int = 64 * 1024
    # Connections or requests in flight (each counted, as uvicorn's limit_concurrency)
    # past which a new request gets a problem+json 503.
    max_concurrency: int = 1000
    # A list page stops early (with a next cursor) once its objects reach this many bytes.
    list_max_bytes: int = 16 * 1024 * 1024
    # An event's payload is cut to this many bytes (labels dropped, `truncated` says so).
    event_max_payload_bytes: int = 64 * 1024
    # Events are kept while under `event_retention` events AND this many payload bytes.
    event_retention_bytes: int = 256 * 1024 * 1024
    # A followed (or read) log line longer than this is cut into parts marked partial.
    log_line_max_bytes: int = 64 * 1024
    # Streams (GET /events, log follows) one client may hold open at once; past it, 429.
    # TCP clients are keyed by address, unix-socket callers by uid (SO_PEERCRED).
    max_streams_per_client: int = 32
    # Output bytes waiting for one attached client (issue 16); while they do, the process's
    # output waits (as a terminal's would) ...
    attach_client_buffer_bytes: int = 1024 * 1024
    # ... for at most this many seconds without the client reading: then it is
    # disconnected (close code 1008) and the process, other clients and the log go on.
    attach_stall_seconds: float = 5.0
    # The largest message an attached client may send (stdin data, a resize); past it,
    # the session ends with a status message and close code 1009.
    attach_max_message_bytes: int = 1024 * 1024
    # The default network's subnet (issue 15), used when the network `cargohold` is first made.
    # 10.213.0.0/16: not Docker's (172.17/16), Podman's (10.88/16) or a common LAN range.
    default_subnet: str = "10.213.0.0/16"
    # Where CNI plugins are looked up, in order (the CNI_PATH given to them).
    cni_path: tuple[Path, ...] = (Path("/usr/lib/cni"),)

    @property
    def database_path(self) -> Path:
        return self.root / "metadata.db"

    @property
    def has_tcp_listener(self) -> bool:
        return any(listener.is_tcp for listener in self.listeners)

    @property
    def default_token_path(self) -> Path:
        return self.state / "token"
