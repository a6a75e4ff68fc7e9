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
    token_file: Path | None = None
    metrics_public: bool = False
    # None: overlayfs where the kernel has it, else native.
    snapshotter: str | None = None
    # Request bodies above this are refused with 413 (DESIGN: 1 MiB).
    max_body_bytes: int = 1024 * 1024
    # A tar streamed to /snapshots/import may be this large.
    import_max_bytes: int = 8 * 1024**3
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
    # Events kept in the store; older ones are pruned as new ones arrive.
    event_retention: int = 100_000
    # Events buffered per SSE subscriber before it falls back to reading the store.
    subscriber_queue_size: int = 1024
    # Seconds between SSE heartbeat comments on an idle stream.
    heartbeat_seconds: float = 15.0
    # Seconds a frozen SSE client may block one send before it is dropped.
    sse_send_timeout: float = 30.0

    @property
    def database_path(self) -> Path:
        return self.root / "metadata.db"

    @property
    def has_tcp_listener(self) -> bool:
        return any(listener.is_tcp for listener in self.listeners)

    @property
    def default_token_path(self) -> Path:
        return self.state / "token"
