"""The client commands, docker-style (DESIGN "The client CLI"), as a Typer app that
app/client/entry.py runs for every command but `serve` and `openapi`. Each command is a few
calls of `api.Client`; a `ClientError` anywhere prints its one line to stderr and exits 1.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn
from rich.table import Table

from .. import __version__
from ..models import (
    Container,
    ContainerCreate,
    ContainerNetwork,
    ExecCreate,
    Exit,
    ImagePull,
    ImagePush,
    LogLine,
    NetworkCreate,
    OCIProcess,
    PortMapping,
    ProcessOverride,
    Task,
    TaskCreate,
)
from .api import DEFAULT_HOST, Client, ClientError, Endpoint, TLSOptions, read_token
from .attach import open_attach, relay

app = typer.Typer(
    name="cargohold", no_args_is_help=True, add_completion=True, rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Cargohold: the daemon (`cargohold serve`, `cargohold openapi`; see `cargohold serve --help`) "
    "and its client, docker-style, over the HTTP API.",
)
network_app = typer.Typer(help="Manage networks.", no_args_is_help=True)
app.add_typer(network_app, name="network")

# Commands with a command line of their own after IMAGE or CONTAINER stop parsing options there.
TRAILING = {"allow_interspersed_args": False}
DEFAULT_NETWORK = "cargohold"  # DESIGN "Networks": the network that always exists
STOP_SECONDS = 10
INTERRUPTED = 130  # 128 + SIGINT: the exit status of a command Ctrl-C ended
_stderr = Console(stderr=True)


def _state(ctx: typer.Context) -> Client:
    client: Client = ctx.obj
    return client


def _client_of(params: dict[str, Any]) -> Client:
    """The client the global options (`main`'s parameters, as click parsed them) describe."""

    def path(name: str) -> Path | None:  # click's context holds paths as given, as strings
        value = params.get(name)
        return None if value is None else Path(value)

    token = read_token(path("token_file"), os.environ.get("CARGOHOLD_TOKEN"))
    tls = TLSOptions(bool(params.get("tls")), path("tlscacert"), path("tlscert"), path("tlskey"))
    return Client(Endpoint.parse(params.get("host") or DEFAULT_HOST, tls.wanted),
                  params.get("namespace") or "default", token, tls)


def _complete_containers(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Shell completion of a container argument: the ids the daemon has, with their image.
    Completion runs no command callback, so the client is made from the parsed options;
    a daemon that cannot be asked completes nothing."""
    try:
        with _client_of(ctx.find_root().params) as client:
            return [(c.id, c.image) for c in client.containers() if c.id.startswith(incomplete)]
    except (ClientError, ValidationError, OSError):
        return []


def _version(value: bool) -> None:
    if value:
        print(f"cargohold {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(envvar="CARGOHOLD_HOST", help="unix:///path.sock or tcp://host:port")
                    ] = DEFAULT_HOST,
    namespace: Annotated[str, typer.Option("--namespace", "-n", envvar="CARGOHOLD_NAMESPACE")] = "default",
    token_file: Annotated[Path | None, typer.Option(help="the bearer token for tcp:// (else $CARGOHOLD_TOKEN)")
                          ] = None,
    tls: Annotated[bool, typer.Option("--tls", envvar="CARGOHOLD_TLS",
                                      help="speak TLS to a tcp:// host (implied by the three below and https://)")
                   ] = False,
    tlscacert: Annotated[Path | None, typer.Option("--tlscacert", envvar="CARGOHOLD_TLS_CA",
                                                   help="trust the daemon's certificate if this CA (PEM) signed it "
                                                   "(default: the system's CAs)")] = None,
    tlscert: Annotated[Path | None, typer.Option("--tlscert", envvar="CARGOHOLD_TLS_CERT",
                                                 help="our client certificate (PEM), for a daemon with --tls-client-ca")
                       ] = None,
    tlskey: Annotated[Path | None, typer.Option("--tlskey", envvar="CARGOHOLD_TLS_KEY",
                                                help="the client certificate's private key (PEM)")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Cargohold's client: docker-style commands over the daemon's HTTP API.

    Example: cargohold --host tcp://10.0.0.5:2376 --tlscacert ca.pem --tlscert cert.pem --tlskey key.pem ps
    """
    client = _client_of(ctx.params)  # the options above, by name: completion reads them the same way
    ctx.call_on_close(lambda: client.__exit__(None, None, None))
    ctx.obj = client


def run_app(argv: list[str]) -> int:
    """Run the Typer app on `argv`: its exit status. A ClientError (or a body the API's own
    models refuse before it is sent) is one line on stderr and status 1; usage errors are
    click's (status 2)."""
    try:
        app(args=argv, prog_name="cargohold")  # standalone: click handles usage errors and exits
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except ClientError as error:
        print(f"cargohold: {error}", file=sys.stderr)
        return 1
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        print(f"cargohold: {where}: {first['msg']} (given {first.get('input')!r})", file=sys.stderr)
        return 1
    return 0


# --- output helpers ------------------------------------------------------------------


def _print_json(items: list[Any]) -> None:
    print(json.dumps([item.model_dump(mode="json") if isinstance(item, BaseModel) else item for item in items],
                     indent=2))


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _print(table: Table) -> None:
    # Wide enough that a pipe gets whole lines, not a table folded at 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 250, soft_wrap=False)
    console.print(table)


def _ago(when: datetime | None) -> str:
    if when is None:
        return ""
    seconds = int((datetime.now(UTC) - when).total_seconds())
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{max(seconds, 0)} seconds ago"


def _size(count: float | None) -> str:
    if count is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.3g}{unit}"
        count /= 1000
    return f"{count:.3g}TB"


Output = Annotated[str, typer.Option("--output", "-o", help="table or json")]
ContainerArg = Annotated[str, typer.Argument(help="a container", autocompletion=_complete_containers)]
ContainerList = Annotated[list[str], typer.Argument(help="containers", autocompletion=_complete_containers)]


def _check_output(output: str) -> None:
    if output not in ("table", "json"):
        raise ClientError(f"--output {output}: use table or json")


# --- run, exec, attach ----------------------------------------------------------------


def _ports(published: list[str]) -> list[PortMapping]:
    ports = []
    for given in published:
        spec, _, protocol = given.partition("/")
        parts = spec.split(":")
        try:
            if len(parts) == 2:
                ports.append(PortMapping(host_port=int(parts[0]), container_port=int(parts[1]),
                                         protocol=protocol or "tcp"))  # type: ignore[arg-type]
            elif len(parts) == 3:
                ports.append(PortMapping(host_ip=parts[0], host_port=int(parts[1]),  # type: ignore[arg-type]
                                         container_port=int(parts[2]), protocol=protocol or "tcp"))  # type: ignore[arg-type]
            else:
                raise ValueError
        except ValueError:
            raise ClientError(f"-p {given}: use HOST_PORT:CONTAINER_PORT[/tcp|udp] or IP:HOST_PORT:CONTAINER_PORT"
                              ) from None
    return ports


def _ensure_image(client: Client, reference: str, plain_http: bool) -> None:
    try:
        client.image(reference)
    except ClientError as error:
        if error.status != 404:
            raise
        print(f"Unable to find image '{reference}' locally", file=sys.stderr)
        _pull(client, reference, plain_http, to=sys.stderr)


def _attach_and_wait(client: Client, container_id: str, exec_id: str | None, interactive: bool, terminal: bool,
                     start: Callable[[], object], stop: Callable[[], None] | None) -> int:
    """Attach, start (after attaching, so no output is missed), relay until the end: the exit status."""
    with open_attach(client, container_id, exec_id, interactive) as ws:
        start()
        status = relay(ws, interactive, terminal, stop)
    if status is None:
        status = client.wait(container_id, exec_id).exit_status
    return status


@app.command(context_settings=TRAILING)
def run(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(help="the image, pulled if missing")],
    command: Annotated[list[str] | None, typer.Argument(help="the command and its arguments")] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="print the container's id and leave it running")
                      ] = False,
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="keep stdin open and send ours")] = False,
    terminal: Annotated[bool, typer.Option("--tty", "-t", help="run it on a pseudo-terminal")] = False,
    remove: Annotated[bool, typer.Option("--rm", help="delete the container when it exits")] = False,
    publish: Annotated[list[str] | None, typer.Option("--publish", "-p", help="HOST:CONTAINER port (repeatable)")
                       ] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="K=V (repeatable)")] = None,
    name: Annotated[str | None, typer.Option(help="the container's id (default: random)")] = None,
    network: Annotated[str | None, typer.Option(help=f"the network to join (with -p: default {DEFAULT_NETWORK})")
                       ] = None,
    memory: Annotated[int | None, typer.Option("--memory", "-m", help="memory limit in bytes")] = None,
    workdir: Annotated[str | None, typer.Option("--workdir", "-w", help="the working directory")] = None,
    plain_http: Annotated[bool, typer.Option("--plain-http", help="pull a missing image over plain HTTP")] = False,
) -> None:
    """Create a container from IMAGE and run it; attached, exit with its exit status.

    Example: cargohold run --rm busybox echo hi;  cargohold run -it --rm busybox sh;
    cargohold run -d -p 18080:80 --name web IMAGE httpd -f
    """
    client = _state(ctx)
    container_id = name or secrets.token_hex(6)
    _ensure_image(client, image, plain_http)
    body: dict[str, Any] = {"id": container_id, "image": image}
    process = ProcessOverride(args=command or None, env=env or None, cwd=workdir, terminal=terminal or None)
    if process.model_dump(exclude_none=True):
        body["process"] = process
    if publish or network:
        body["network"] = ContainerNetwork(name=network or DEFAULT_NETWORK, ports=_ports(publish or []))
    client.create_container(ContainerCreate.model_validate(body))
    try:
        client.create_task(TaskCreate(container_id=container_id, stdin=interactive, terminal=terminal))
        if memory is not None:
            client.request("PATCH", f"/tasks/{container_id}", json={"resources": {"memory": {"limit": memory}}})
    except ClientError:
        with suppress(ClientError):
            client.delete_container(container_id)
        raise
    if detach:
        client.start_task(container_id)
        print(container_id)
        return

    def stop() -> None:
        with suppress(ClientError):
            _stop(client, container_id, STOP_SECONDS)

    status = _attach_and_wait(client, container_id, None, interactive, terminal,
                              lambda: client.start_task(container_id), None if terminal else stop)
    if remove:
        _remove_when_gone(client, container_id)
    raise typer.Exit(status)


def _remove_when_gone(client: Client, container_id: str) -> None:
    """Delete the container once the daemon has torn its exited task down (409 until then)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            client.delete_container(container_id)
            return
        except ClientError as error:
            if error.status != 409 or time.monotonic() > deadline:
                raise
        time.sleep(0.02)


@app.command(name="exec", context_settings=TRAILING)
def exec_(
    ctx: typer.Context,
    container: Annotated[str, typer.Argument(help="a running container", autocompletion=_complete_containers)],
    command: Annotated[list[str], typer.Argument(help="the command and its arguments")],
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="keep stdin open and send ours")] = False,
    terminal: Annotated[bool, typer.Option("--tty", "-t", help="run it on a pseudo-terminal")] = False,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="K=V (repeatable)")] = None,
    workdir: Annotated[str, typer.Option("--workdir", "-w", help="the working directory")] = "/",
) -> None:
    """Run a command in a running container; exit with its exit status.

    Example: cargohold exec web cat /etc/hostname;  cargohold exec -it web sh
    """
    client = _state(ctx)
    exec_id = f"exec-{secrets.token_hex(6)}"
    process = OCIProcess(args=command, cwd=workdir, terminal=terminal or None, env=env or None)
    client.add_exec(container, ExecCreate(exec_id=exec_id, process=process, stdin=interactive))
    if interactive or terminal:
        # Attached before it starts (the daemon stages it), so nothing it prints is missed.
        raise typer.Exit(_attach_and_wait(client, container, exec_id, interactive, terminal,
                                          lambda: client.start_exec(container, exec_id), None))
    # Without stdin or a terminal its log is followed: it holds the output from the start.
    client.start_exec(container, exec_id)
    _print_log(client, container, follow=True, tail=None, timestamps=False, exec_id=exec_id)
    raise typer.Exit(client.wait(container, exec_id).exit_status)


@app.command()
def attach(
    ctx: typer.Context,
    container: Annotated[str, typer.Argument(help="a running container", autocompletion=_complete_containers)],
    no_stdin: Annotated[bool, typer.Option("--no-stdin", help="do not send our stdin")] = False,
) -> None:
    """Attach to a running container's streams (its terminal, if it has one); exit with its status.

    Example: cargohold attach web
    """
    client = _state(ctx)
    terminal = bool(client.container(container).spec.get("process", {}).get("terminal"))
    with open_attach(client, container, None, not no_stdin) as ws:
        status = relay(ws, not no_stdin, terminal, None)
    if status is None:
        status = client.wait(container).exit_status
    raise typer.Exit(status)


# --- containers and tasks -----------------------------------------------------------------


# A container's last exit is asked for when it has no task: no task means no wait to block on,
# but a task created meanwhile would make the wait a long poll; this bounds it.
LAST_EXIT_SECONDS = 2.0


def _last_exit(client: Client, container: Container) -> Exit | None:
    """The recorded exit of the container's last task (exit means delete), None if it never
    ran. Exits are kept by id: one from before the container was (re)created is not its own."""
    with suppress(ClientError):
        last = client.wait(container.id, timeout=LAST_EXIT_SECONDS)
        return last if last.exited_at >= container.created_at else None
    return None


def _status(task: Task | None, last: Exit | None = None) -> str:
    if task is None:
        return f"Exited ({last.exit_status}) {_ago(last.exited_at)}" if last is not None else "Created"
    if task.status == "running" and task.started_at is not None:
        return f"Up {_ago(task.started_at).removesuffix(' ago')}"
    return task.status.value.capitalize()


@app.command()
def ps(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", "-a", help="also containers without a running task")] = False,
    output: Output = "table",
) -> None:
    """List containers (those with a task; -a: all).

    Example: cargohold ps -a --output json
    """
    _check_output(output)
    client = _state(ctx)
    tasks = {task.id: task for task in client.tasks()}
    containers = [c for c in client.containers() if all_ or c.id in tasks]
    exits = {c.id: _last_exit(client, c) for c in containers if c.id not in tasks}
    if output == "json":
        listed: list[dict[str, Any]] = []
        for c in containers:
            task = tasks[c.id].model_dump(mode="json") if c.id in tasks else None
            entry = {**c.model_dump(mode="json"), "task": task}
            if (last := exits.get(c.id)) is not None:
                entry["exit"] = last.model_dump(mode="json")  # its last task's, as `wait` reports it
            listed.append(entry)
        _print_json(listed)
        return
    table = _table("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS")
    for container in containers:
        args = (container.spec.get("process") or {}).get("args") or []
        command = " ".join(args)
        ports = ", ".join(f"{p.host_ip or '0.0.0.0'}:{p.host_port}->{p.container_port}/{p.protocol.value}"
                          for p in (container.network.ports if container.network else []))
        table.add_row(container.id, container.image, json.dumps(command[:40]), _ago(container.created_at),
                      _status(tasks.get(container.id), exits.get(container.id)), ports)
    _print(table)


@app.command()
def inspect(ctx: typer.Context, names: Annotated[list[str], typer.Argument(
        help="containers or images", autocompletion=_complete_containers)]) -> None:
    """Print containers (with their task) or images as JSON.

    Example: cargohold inspect web
    """
    client = _state(ctx)
    found: list[Any] = []
    for name in names:
        try:
            container = client.container(name)
            document: dict[str, Any] = container.model_dump(mode="json")
            try:
                document["task"] = client.task(name).model_dump(mode="json")
            except ClientError:
                if (last := _last_exit(client, container)) is not None:
                    document["exit"] = last.model_dump(mode="json")  # its last task's, as `wait` reports it
        except ClientError as error:
            if error.status not in (400, 404):
                raise
            try:
                document = client.image(name).model_dump(mode="json")
            except ClientError:
                raise ClientError(f"no container or image named {name!r} in namespace "
                                  f"{client.namespace!r}") from None
        found.append(document)
    _print_json(found)


@app.command()
def logs(
    ctx: typer.Context,
    container: ContainerArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing while it runs")] = False,
    tail: Annotated[int | None, typer.Option(help="only the last N lines")] = None,
    timestamps: Annotated[bool, typer.Option("--timestamps", help="show each line's time")] = False,
) -> None:
    """Print a container's log (its task's, or its last task's).

    Example: cargohold logs -f --tail 20 web
    """
    _print_log(_state(ctx), container, follow, tail, timestamps)


def _print_log(client: Client, container: str, follow: bool, tail: int | None, timestamps: bool,
               exec_id: str | None = None) -> None:
    with client.logs(container, follow, tail, exec_id) as lines:
        for text in lines:
            if not text:
                continue
            line = LogLine.model_validate_json(text)
            stream = sys.stderr if line.stream == "stderr" else sys.stdout
            prefix = f"{line.time.isoformat()} " if timestamps else ""
            stream.write(prefix + line.line + ("" if line.partial else "\n"))
            stream.flush()


def _stop(client: Client, container_id: str, seconds: int) -> None:
    try:
        client.kill(container_id, "SIGTERM")
        client.wait(container_id, timeout=seconds)
    except ClientError as error:
        if error.status is not None:
            raise
        client.kill(container_id, "SIGKILL")
        client.wait(container_id, timeout=30)


@app.command()
def stop(
    ctx: typer.Context, containers: ContainerList,
    time_: Annotated[int, typer.Option("--time", "-t", help="seconds before SIGKILL")] = STOP_SECONDS,
) -> None:
    """Stop containers: SIGTERM, then SIGKILL after --time seconds.

    Example: cargohold stop -t 2 web
    """
    client = _state(ctx)
    for container in containers:
        _stop(client, container, time_)
        print(container)


@app.command()
def kill(
    ctx: typer.Context, containers: ContainerList,
    signal: Annotated[str, typer.Option("--signal", "-s", help="a name or number")] = "SIGKILL",
) -> None:
    """Send a signal to containers' tasks (default SIGKILL).

    Example: cargohold kill -s HUP web
    """
    client = _state(ctx)
    for container in containers:
        client.kill(container, int(signal) if signal.isdigit() else signal)
        print(container)


@app.command()
def rm(
    ctx: typer.Context, containers: ContainerList,
    force: Annotated[bool, typer.Option("--force", "-f", help="kill and delete a running task first")] = False,
) -> None:
    """Delete containers (-f: also a running one).

    Example: cargohold rm -f web
    """
    client = _state(ctx)
    for container in containers:
        if force:
            try:
                client.delete_task(container)
            except ClientError as error:
                if error.status != 404:
                    raise
            _remove_when_gone(client, container)
        else:
            client.delete_container(container)
        print(container)


@app.command()
def stats(
    ctx: typer.Context,
    containers: Annotated[list[str] | None, typer.Argument(help="default: every running task",
                                                          autocompletion=_complete_containers)] = None,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="print one table and exit")] = False,
    output: Output = "table",
) -> None:
    """A live table of CPU %, memory, pids and network I/O per task, refreshed each second.

    Example: cargohold stats --no-stream
    """
    _check_output(output)
    client = _state(ctx)
    # CPU % from two of the monitor's readings: cpu seconds used over the time between them.
    last: dict[str, tuple[datetime, float]] = {}

    def readings() -> list[tuple[str, Any]]:
        ids = containers or [task.id for task in client.tasks()]
        found = []
        for container_id in ids:
            with suppress(ClientError):
                found.append((container_id, client.metrics(container_id)))
        return found

    def table() -> Table:
        grid = _table("CONTAINER", "CPU %", "MEM USAGE / LIMIT", "PIDS", "NET I/O")
        for container_id, m in readings():
            cpu = m.cpu_usage_seconds or 0.0
            before = last.get(container_id)
            elapsed = (m.read_at - before[0]).total_seconds() if before else 0.0
            percent = f"{100 * (cpu - before[1]) / elapsed:.2f}%" if before and elapsed > 0 else "-"
            if not before or elapsed > 0:
                last[container_id] = (m.read_at, cpu)
            limit = _size(m.memory_limit_bytes) if m.memory_limit_bytes else "unlimited"
            net = f"{_size(sum(m.network_receive_bytes.values()))} / {_size(sum(m.network_transmit_bytes.values()))}"
            grid.add_row(container_id, percent, f"{_size(m.memory_usage_bytes)} / {limit}",
                         str(m.pids_current if m.pids_current is not None else "-"), net)
        return grid

    if output == "json":
        _print_json([m for _, m in readings()])
        return
    if no_stream:
        table()  # a first reading, for the CPU % of the second (the monitor reads once a second)
        time.sleep(1.1)
        _print(table())
        return
    try:
        if not sys.stdout.isatty():
            while True:  # a pipe gets one table a second, not a live display
                _print(table())
                sys.stdout.flush()
                time.sleep(1)
        with Live(table(), console=Console(), auto_refresh=False) as live:
            while True:
                time.sleep(1)
                live.update(table(), refresh=True)
    except KeyboardInterrupt:
        # Ctrl-C is how a live table ends: no "Aborted!", the status a shell gives a command
        # ended by SIGINT (128 + 2), the last table left on the screen.
        raise typer.Exit(INTERRUPTED) from None


# --- images ------------------------------------------------------------------------------


def _transfer(events: Iterator[tuple[str, Any]], out: Any, describe: Callable[[str, Any], str | None]) -> Any:
    """Show a pull's or a push's progress events on `out`: on a terminal a bar per blob (from
    the `progress` events) under the lines `describe` gives for the others; otherwise only
    those lines (`describe` sees the `progress` events too). The `done` event's data; an
    `error` event raises ClientError."""
    def final(kind: str, data: Any) -> bool:
        if kind == "error":
            raise ClientError(f"{' '.join(str(data.get('detail', '')).split())} ({data.get('status')})",
                              data.get("status"))
        return kind == "done"

    if out.isatty():
        progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                            console=Console(file=out), transient=False)
        bars: dict[str, TaskID] = {}
        with progress:
            for kind, data in events:
                if kind == "progress":
                    digest = data["digest"]
                    if digest not in bars:
                        bars[digest] = progress.add_task(digest.split(":")[-1][:12], total=data["total"])
                    progress.update(bars[digest], completed=data["bytes"])
                    continue
                done = final(kind, data)
                if (line := describe(kind, data)) is not None:
                    progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
                if done:
                    return data
    else:
        for kind, data in events:
            done = final(kind, data)
            if (line := describe(kind, data)) is not None:
                print(line, file=out, flush=True)
            if done:
                return data
    raise ClientError("the daemon ended the progress stream without a result")


def _pull(client: Client, reference: str, plain_http: bool, to: Any = None) -> None:
    downloaded: set[str] = set()

    def describe(kind: str, data: Any) -> str | None:
        if kind == "progress":
            if data["bytes"] < data["total"] or data["digest"] in downloaded:
                return None
            downloaded.add(data["digest"])
            return f"{data['digest'][:19]}: downloaded {data['total']} bytes ({data['media_type']})"
        if kind == "resolved":
            return f"resolved {data['reference']} -> {data['target']['digest']}"
        if kind == "unpacked":
            return f"{data['layer'][:19]}: {'already unpacked' if data.get('reused') else 'unpacked'}"
        if kind == "done":
            return f"pulled {data['name']} ({data['target']['digest']})"
        return None

    with client.pull(ImagePull(reference=reference, plain_http=plain_http)) as events:
        _transfer(events, to or sys.stdout, describe)


# How a push's blob outcomes read (`pushed` events).
PUSH_OUTCOMES = {"uploaded": "pushed", "mounted": "mounted", "exists": "already there"}


def _describe_push(kind: str, data: Any) -> str | None:
    if kind == "pushed":
        return f"{data['digest'][:19]}: {PUSH_OUTCOMES.get(data['outcome'], data['outcome'])}"
    if kind == "done":
        return f"{data['reference']}: digest {data['digest']} size {data['size']}"
    return None


PlainHttp = Annotated[bool, typer.Option("--plain-http", help="speak plain HTTP to the registry (no TLS)")]


@app.command()
def pull(ctx: typer.Context, reference: str, plain_http: PlainHttp = False) -> None:
    """Pull an image: a progress bar per layer on a terminal, plain lines otherwise.

    Example: cargohold pull busybox;  cargohold pull --plain-http 127.0.0.1:5000/library/busybox:latest
    """
    _pull(_state(ctx), reference, plain_http)


@app.command()
def push(ctx: typer.Context, image: str, reference: Annotated[str | None, typer.Argument(
        help="where to push (default: the image's own name)")] = None, plain_http: PlainHttp = False) -> None:
    """Push an image to a registry: a progress bar per blob on a terminal, plain lines otherwise.

    Example: cargohold push --plain-http busybox 127.0.0.1:5000/team/busybox:v1
    """
    with _state(ctx).push(image, ImagePush(reference=reference or image, plain_http=plain_http)) as events:
        _transfer(events, sys.stdout, _describe_push)


@app.command()
def images(ctx: typer.Context, output: Output = "table") -> None:
    """List images.

    Example: cargohold images --output json
    """
    _check_output(output)
    found = _state(ctx).images()
    if output == "json":
        _print_json(found)
        return
    table = _table("NAME", "DIGEST", "CREATED", "SIZE")
    for image in found:
        table.add_row(image.name, image.target.digest[:19], _ago(image.created_at), _size(image.size))
    _print(table)


@app.command()
def rmi(ctx: typer.Context, names: list[str]) -> None:
    """Delete images (their names; the blobs go at the next garbage collection).

    Example: cargohold rmi busybox
    """
    client = _state(ctx)
    for name in names:
        client.delete_image(name)
        print(f"Untagged: {name}")


def _chunks(path: Path | None) -> Iterator[bytes]:
    source = sys.stdin.buffer if path is None else path.open("rb")
    with source:
        while chunk := source.read(1 << 20):
            yield chunk


@app.command(name="import")
def import_(ctx: typer.Context, archive: Annotated[Path | None, typer.Argument(
        help="an OCI layout or docker save tar, maybe compressed (default: stdin)")] = None) -> None:
    """Import images from an archive.

    Example: cargohold import busybox.tar
    """
    for image in _state(ctx).import_images(_chunks(archive)):
        print(f"imported {image.name} ({image.target.digest})")


@app.command()
def export(ctx: typer.Context, image: str, output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="the file to write (default: stdout)")] = None) -> None:
    """Export an image as an OCI layout tar.

    Example: cargohold export -o busybox.tar busybox
    """
    client = _state(ctx)
    if output is None and sys.stdout.isatty():
        raise ClientError("refusing to write a tar to a terminal: give --output FILE or redirect stdout")
    target = sys.stdout.buffer if output is None else output.open("wb")
    with client.export_image(image) as chunks, target:
        for chunk in chunks:
            target.write(chunk)


# --- networks and events -----------------------------------------------------------------


@network_app.command("ls")
def network_ls(ctx: typer.Context, output: Output = "table") -> None:
    """List networks.

    Example: cargohold network ls
    """
    _check_output(output)
    found = _state(ctx).networks()
    if output == "json":
        _print_json(found)
        return
    table = _table("NAME", "DRIVER", "BRIDGE", "SUBNET", "GATEWAY")
    for network in found:
        table.add_row(network.name, network.driver, network.bridge, network.subnet, network.gateway)
    _print(table)


@network_app.command("create")
def network_create(
    ctx: typer.Context, name: str,
    subnet: Annotated[str, typer.Option(help="an IPv4 CIDR, e.g. 10.213.7.0/24")],
    bridge: Annotated[str | None, typer.Option(help="the Linux bridge's name")] = None,
) -> None:
    """Create a bridge network.

    Example: cargohold network create --subnet 10.213.7.0/24 backend
    """
    print(_state(ctx).create_network(NetworkCreate(name=name, subnet=subnet, bridge=bridge)).name)


@network_app.command("rm")
def network_rm(ctx: typer.Context, names: list[str]) -> None:
    """Delete networks (409 while a container uses one).

    Example: cargohold network rm backend
    """
    client = _state(ctx)
    for name in names:
        client.delete_network(name)
        print(name)


@app.command()
def events(
    ctx: typer.Context,
    filter_: Annotated[list[str] | None, typer.Option("--filter", "-f", help='e.g. topic~="^/tasks/" (repeatable)')
                       ] = None,
    since: Annotated[int | None, typer.Option(help="replay events after this id")] = None,
    output: Output = "table",
) -> None:
    """Print events as they happen (Ctrl-C ends).

    Example: cargohold events --filter 'topic~="^/tasks/"'
    """
    _check_output(output)
    with _state(ctx).events(filter_, since) as stream:
        for kind, data in stream:
            if kind == "error":
                raise ClientError(str(data.get("detail", data)))
            if output == "json":
                print(json.dumps(data), flush=True)
            else:
                print(f"{data['timestamp']} {data['namespace']} {data['topic']} {json.dumps(data['event'])}",
                      flush=True)


from . import ui as _ui  # noqa: E402, F401  (registers `cargohold ui`, app/client/ui.py)
