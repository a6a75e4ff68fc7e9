"""A thin, typed client of the daemon's HTTP API over httpx: where the daemon is
(`unix://` socket or `tcp://` with a bearer token, over TLS with `TLSOptions`), the
namespace header, the bodies as
app/models.py's pydantic models, and every failure as a `ClientError` whose message is
one line a person can act on (the problem's `detail`, or where no daemon answered).

Synchronous on purpose: a command does one thing after another, and a CLI process that
never starts an event loop starts faster.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel

from ..models import (
    Container,
    ContainerCreate,
    ExecCreate,
    Exit,
    Image,
    ImagePull,
    ImagePush,
    Network,
    NetworkCreate,
    Task,
    TaskCreate,
    TaskMetrics,
)

DEFAULT_HOST = "unix:///run/cargohold/cargohold.sock"  # as `cargohold serve`'s default listener
# The URL httpx sees on a unix socket; only its path matters.
UNIX_BASE_URL = "http://cargohold"
# Long-polls (wait) and streams have no read deadline; connecting does.
CONNECT_SECONDS = 5.0
REQUEST_SECONDS = 120.0

M = TypeVar("M", bound=BaseModel)


class ClientError(Exception):
    """A failure to show the user: `str(error)` is one line; `status` the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Endpoint:
    """Where the daemon listens, parsed from `--host`: a unix socket path, or host:port."""

    url: str
    socket: Path | None
    base_url: str

    @classmethod
    def parse(cls, url: str, tls: bool = False) -> Endpoint:
        """`url` as given to --host; `tls`: speak TLS to a tcp:// host (https:// always does)."""
        parts = urlsplit(url)
        if parts.scheme == "unix":
            path = (parts.netloc + parts.path) if parts.netloc else parts.path
            if not path:
                raise ClientError(f"--host {url}: a unix:// URL names a socket, e.g. {DEFAULT_HOST}")
            return cls(url, Path(path), UNIX_BASE_URL)
        if parts.scheme in ("tcp", "http", "https"):
            if not parts.hostname or parts.port is None:
                raise ClientError(f"--host {url}: a tcp:// URL names a host and port, e.g. tcp://127.0.0.1:8080")
            scheme = "https" if parts.scheme == "https" or tls else "http"
            return cls(url, None, f"{scheme}://{parts.netloc}")
        raise ClientError(f"--host {url}: use unix:///path.sock or tcp://host:port")

    @property
    def tls(self) -> bool:
        return self.base_url.startswith("https:")

    @property
    def ws_base_url(self) -> str:
        return ("wss" if self.tls else "ws") + ":" + self.base_url.split(":", 1)[1]


@dataclass(frozen=True)
class TLSOptions:
    """Docker's client TLS options: `--tls` (the system's CAs), `--tlscacert` (trust this CA
    instead), `--tlscert`/`--tlskey` (a client certificate, for a daemon started with
    --tls-client-ca). Any of them means TLS; the daemon's certificate is always verified."""

    enabled: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @property
    def wanted(self) -> bool:
        return self.enabled or any(path is not None for path in (self.ca, self.cert, self.key))

    def context(self) -> ssl.SSLContext:
        if (self.cert is None) != (self.key is None):
            raise ClientError("--tlscert and --tlskey go together: give both, or neither")
        try:
            made = ssl.create_default_context(cafile=str(self.ca) if self.ca is not None else None)
            if self.cert is not None and self.key is not None:
                made.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as error:
            named = ", ".join(f"{flag} {path}" for flag, path in (
                ("--tlscacert", self.ca), ("--tlscert", self.cert), ("--tlskey", self.key)) if path is not None)
            raise ClientError(f"cannot load {named}: {getattr(error, 'strerror', None) or error}") from None
        return made


def read_token(token_file: Path | None, token: str | None) -> str | None:
    """The bearer token: the file's first line, else `token` (CARGOHOLD_TOKEN)."""
    if token_file is not None:
        try:
            return token_file.read_text().strip() or None
        except OSError as error:
            raise ClientError(f"--token-file {token_file}: {error.strerror or error}") from None
    return token or None


class Client:
    """The daemon's API for one namespace. Use as a context manager (it holds a connection pool)."""

    def __init__(self, endpoint: Endpoint, namespace: str = "default", token: str | None = None,
                 tls: TLSOptions | None = None) -> None:
        self.endpoint = endpoint
        self.namespace = namespace
        self.token = token
        headers = {"Cargohold-Namespace": namespace}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.headers = headers
        self.tls = tls or TLSOptions()
        # Made only for an https endpoint (TLS options given for a unix socket are not used:
        # the daemon serves its sockets plain); the attach WebSocket uses it too.
        self.ssl_context = self.tls.context() if endpoint.tls else None
        transport = httpx.HTTPTransport(uds=str(endpoint.socket)) if endpoint.socket is not None else None
        self._http = httpx.Client(
            base_url=endpoint.base_url, transport=transport, headers=headers, trust_env=False,
            timeout=httpx.Timeout(REQUEST_SECONDS, connect=CONNECT_SECONDS),
            verify=self.ssl_context if self.ssl_context is not None else True,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.close()

    # --- the transport -----------------------------------------------------------

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        """One request; a problem answer or no daemon raises ClientError."""
        self._socket_there()
        try:
            response = self._http.request(method, path, **options)
        except httpx.TransportError as error:
            raise self.unreachable(error) from None
        self.raise_for_problem(response)
        return response

    @contextmanager
    def stream(self, method: str, path: str, **options: Any) -> Iterator[httpx.Response]:
        """A streamed response (no read deadline); a problem answer raises ClientError."""
        self._socket_there()
        try:
            with self._http.stream(method, path, timeout=httpx.Timeout(None, connect=CONNECT_SECONDS),
                                   **options) as response:
                if response.is_error:
                    response.read()
                    self.raise_for_problem(response)
                yield response
        except httpx.TransportError as error:
            raise self.unreachable(error) from None

    def _socket_there(self) -> None:
        # Looked at before connecting: httpx leaks the socket of a failed unix connect.
        if self.endpoint.socket is not None and not self.endpoint.socket.exists():
            raise self.unreachable(httpx.ConnectError("no socket"))

    def unreachable(self, error: Exception) -> ClientError:
        where = self.endpoint.url
        tls_problem = self.tls_refusal(error)
        if tls_problem is not None:
            return ClientError(tls_problem)
        if isinstance(error, httpx.RemoteProtocolError) and self.endpoint.socket is None:
            # A TLS listener hangs up on plain HTTP; one requiring client certificates hangs up
            # (TLS 1.3: after the handshake, its alert often unread) on a client without one.
            if not self.endpoint.tls:
                return ClientError(f"the daemon at {where} hung up without an answer: if it serves TLS, add --tls "
                                   "(and --tlscacert FILE)")
            if self.tls.cert is None:
                return ClientError(f"the daemon at {where} closed the TLS connection without an answer: it "
                                   "requires a client certificate? give --tlscert FILE and --tlskey FILE")
            return ClientError(f"the daemon at {where} closed the TLS connection without an answer: it refused "
                               f"our client certificate (--tlscert {self.tls.cert})? its --tls-client-ca must "
                               "have signed it")
        if isinstance(error, httpx.ConnectError):
            socket = self.endpoint.socket
            if socket is not None and not socket.exists():
                reason = f"no socket at {socket}"
            else:
                reason = str(error) or type(error).__name__
            return ClientError(f"cannot connect to the Cargohold daemon at {where} ({reason}): is it running? "
                               "(`cargohold serve`, or say where it listens with --host / CARGOHOLD_HOST)")
        return ClientError(f"the daemon at {where} stopped answering: {error or type(error).__name__}")

    def tls_refusal(self, error: BaseException) -> str | None:
        """One line saying which side of a TLS handshake refused the other, if that is why
        `error` (or what caused it) happened."""
        where, cause = self.endpoint.url, _ssl_cause(error)
        if cause is None:
            return None
        if isinstance(cause, ssl.SSLCertVerificationError):
            trusted = (f"--tlscacert {self.tls.ca}" if self.tls.ca is not None
                       else "the system's CAs (--tlscacert FILE?)")
            return (f"the daemon at {where} presented a certificate that {trusted} does not verify: "
                    f"{cause.verify_message or cause.reason}")
        reason = (cause.reason or str(cause)).upper()
        if "CERTIFICATE_REQUIRED" in reason:
            return f"the daemon at {where} requires a client certificate: give --tlscert FILE and --tlskey FILE"
        if any(alert in reason for alert in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN")):
            return f"the daemon at {where} refused our client certificate (--tlscert {self.tls.cert}): {cause.reason}"
        if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER_FAILURE" in reason:
            return f"the daemon at {where} does not speak TLS there: drop --tls and https:// ({cause.reason})"
        return f"TLS with the daemon at {where} failed: {cause.reason or cause}"

    @staticmethod
    def raise_for_problem(response: httpx.Response) -> None:
        if not response.is_error:
            return
        detail = ""
        try:
            body = response.json()
            if isinstance(body, dict):
                detail = str(body.get("detail") or body.get("title") or "")
        except ValueError:
            detail = response.text.strip()
        detail = " ".join(detail.split()) or response.reason_phrase
        raise ClientError(f"{detail} ({response.status_code})", response.status_code)

    def _get(self, path: str, model: type[M], **params: Any) -> M:
        return model.model_validate_json(self.request("GET", path, params=params or None).content)

    def _list(self, path: str, key: str, model: type[M], **params: Any) -> list[M]:
        """Every page of a paged listing."""
        items: list[M] = []
        after: str | None = None
        while True:
            query = {**params, **({"after": after} if after else {})}
            try:
                body = self.request("GET", path, params=query or None).json()
            except ClientError as error:
                # A namespace is made on first use: until then it holds nothing, as docker shows it.
                if error.status == 404 and str(error).startswith(f'namespace "{self.namespace}"'):
                    return []
                raise
            items += [model.model_validate(item) for item in body[key]]
            after = body.get("next_cursor")
            if not after:
                return items

    # --- containers --------------------------------------------------------------

    def containers(self, filters: list[str] | None = None) -> list[Container]:
        return self._list("/containers", "containers", Container, **({"filter": filters} if filters else {}))

    def container(self, container_id: str) -> Container:
        return self._get(f"/containers/{_segment(container_id)}", Container)

    def create_container(self, body: ContainerCreate) -> Container:
        return Container.model_validate_json(self.request(
            "POST", "/containers", content=body.model_dump_json(exclude_unset=True),
            headers={"Content-Type": "application/json"}).content)

    def delete_container(self, container_id: str) -> None:
        self.request("DELETE", f"/containers/{_segment(container_id)}")

    # --- tasks ---------------------------------------------------------------------

    def tasks(self) -> list[Task]:
        return self._list("/tasks", "tasks", Task)

    def task(self, container_id: str) -> Task:
        return self._get(f"/tasks/{_segment(container_id)}", Task)

    def create_task(self, body: TaskCreate) -> Task:
        return Task.model_validate_json(self.request("POST", "/tasks", json=body.model_dump(mode="json")).content)

    def start_task(self, container_id: str) -> Task:
        return Task.model_validate_json(self.request("POST", f"/tasks/{_segment(container_id)}/start").content)

    def kill(self, container_id: str, signal: str | int = "SIGTERM", exec_id: str | None = None) -> None:
        path = f"/tasks/{_segment(container_id)}" + (f"/processes/{_segment(exec_id)}" if exec_id else "")
        self.request("POST", f"{path}/kill", json={"signal": signal})

    def wait(self, container_id: str, exec_id: str | None = None, timeout: float | None = None) -> Exit:
        """The exit of the task (or exec process), long-polled; ClientError after `timeout` seconds."""
        path = f"/tasks/{_segment(container_id)}" + (f"/processes/{_segment(exec_id)}" if exec_id else "")
        try:
            response = self.request("POST", f"{path}/wait", timeout=httpx.Timeout(timeout, connect=CONNECT_SECONDS))
        except httpx.TimeoutException:
            raise ClientError(f"{container_id} did not exit within {timeout:g} s") from None
        return Exit.model_validate_json(response.content)

    def delete_task(self, container_id: str) -> Exit:
        return Exit.model_validate_json(self.request("DELETE", f"/tasks/{_segment(container_id)}").content)

    def resize(self, container_id: str, width: int, height: int, exec_id: str | None = None) -> None:
        path = f"/tasks/{_segment(container_id)}" + (f"/processes/{_segment(exec_id)}" if exec_id else "")
        self.request("POST", f"{path}/resize", json={"width": width, "height": height})

    def metrics(self, container_id: str) -> TaskMetrics:
        return self._get(f"/tasks/{_segment(container_id)}/metrics", TaskMetrics)

    def add_exec(self, container_id: str, body: ExecCreate) -> None:
        self.request("POST", f"/tasks/{_segment(container_id)}/processes",
                     content=body.model_dump_json(exclude_none=True), headers={"Content-Type": "application/json"})

    def start_exec(self, container_id: str, exec_id: str) -> None:
        self.request("POST", f"/tasks/{_segment(container_id)}/processes/{_segment(exec_id)}/start")

    @contextmanager
    def logs(self, container_id: str, follow: bool = False, tail: int | None = None,
             exec_id: str | None = None) -> Iterator[Iterator[str]]:
        """The task's (or exec process's) log as JSON lines (app/models.py LogLine), streamed."""
        params: dict[str, Any] = {"follow": follow}
        if tail is not None:
            params["tail"] = tail
        path = f"/tasks/{_segment(container_id)}" + (f"/processes/{_segment(exec_id)}" if exec_id else "")
        with self.stream("GET", f"{path}/logs", params=params) as response:
            yield response.iter_lines()

    # --- images --------------------------------------------------------------------

    def images(self) -> list[Image]:
        return self._list("/images", "images", Image)

    def image(self, name: str) -> Image:
        return self._get(f"/images/{_image_path(name)}", Image)

    def delete_image(self, name: str) -> None:
        self.request("DELETE", f"/images/{_image_path(name)}")

    @contextmanager
    def pull(self, body: ImagePull) -> Iterator[Iterator[tuple[str, Any]]]:
        """The pull's progress events (name, data), ending with `done` (an Image) or `error`."""
        with self.stream("POST", "/images/pull", json=body.model_dump(mode="json", exclude_none=True),
                         headers={"Accept": "text/event-stream"}) as response:
            yield server_sent_events(response.iter_lines())

    @contextmanager
    def push(self, name: str, body: ImagePush) -> Iterator[Iterator[tuple[str, Any]]]:
        """The push's progress events (name, data), ending with `done` (an ImagePushResult) or `error`."""
        with self.stream("POST", f"/images/{_image_path(name)}/push",
                         json=body.model_dump(mode="json", exclude_none=True),
                         headers={"Accept": "text/event-stream"}) as response:
            yield server_sent_events(response.iter_lines())

    def import_images(self, data: Iterator[bytes]) -> list[Image]:
        response = self.request("POST", "/images/import", content=data,
                                headers={"Content-Type": "application/octet-stream"},
                                timeout=httpx.Timeout(None, connect=CONNECT_SECONDS))
        return [Image.model_validate(item) for item in response.json()]

    @contextmanager
    def export_image(self, name: str) -> Iterator[Iterator[bytes]]:
        with self.stream("GET", f"/images/{_image_path(name)}/export") as response:
            yield response.iter_bytes()

    # --- networks and events ----------------------------------------------------------

    def networks(self) -> list[Network]:
        return [Network.model_validate(item) for item in self.request("GET", "/networks").json()["networks"]]

    def create_network(self, body: NetworkCreate) -> Network:
        return Network.model_validate_json(
            self.request("POST", "/networks", json=body.model_dump(mode="json", exclude_none=True)).content)

    def delete_network(self, name: str) -> None:
        self.request("DELETE", f"/networks/{_segment(name)}")

    @contextmanager
    def events(self, filters: list[str] | None = None, since: int | None = None
               ) -> Iterator[Iterator[tuple[str, Any]]]:
        params: dict[str, Any] = {}
        if filters:
            params["filter"] = filters
        if since is not None:
            params["since"] = since
        with self.stream("GET", "/events", params=params, headers={"Accept": "text/event-stream"}) as response:
            yield server_sent_events(response.iter_lines())


def server_sent_events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event, JSON data) for each event of an SSE stream; comments (heartbeats) skipped."""
    name, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", list[str]()
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
    if data:
        yield name, json.loads("\n".join(data))


def _ssl_cause(error: BaseException | None) -> ssl.SSLError | None:
    """The ssl.SSLError behind `error` (httpx and websockets wrap it), if any."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, ssl.SSLError):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def _segment(value: str) -> str:
    return quote(value, safe="")


def _image_path(name: str) -> str:
    # Image routes take the whole reference, `/` and `:` included (DESIGN "Content and images").
    return quote(name, safe="/:@")


def environment_default(name: str, fallback: str) -> str:
    return os.environ.get(name) or fallback
