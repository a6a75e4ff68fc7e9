"""Routes for /tasks: HTTP shape only; the rules are in TaskService."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sse_starlette import ServerSentEvent

from ..config import Settings
from ..models import (
    ExecCreate,
    Exit,
    KillRequest,
    LogLine,
    PidList,
    Process,
    Task,
    TaskCreate,
    TaskList,
    TaskMetrics,
    TaskPatch,
)
from ..pages import cut
from ..runtime.tasks import TaskService
from ..streams import ClientStreams
from .deps import (
    ContainerId,
    DaemonDep,
    ExecId,
    NamespaceHeader,
    Networks,
    PageQuery,
    Streams,
    Tasks,
    client_key,
    link_next_page,
)
from .problems import problems
from .sse import event_source, held_while_sent

router = APIRouter(prefix="/tasks", tags=["tasks"])

TASK_PROBLEMS = (400, 404, 409, 503)
LOG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON lines (`application/x-ndjson`), or SSE with `Accept: text/event-stream`",
        "content": {
            "application/x-ndjson": {"schema": LogLine.model_json_schema()},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }
}


@router.post(
    "", status_code=201, summary="Create a task for a container", responses=problems(400, 404, 409, 413, 422, 503)
)
async def create_task(
    body: TaskCreate, namespace: NamespaceHeader, tasks: Tasks, networks: Networks, response: Response
) -> Task:
    task = await tasks.create(namespace, body)
    response.headers["Location"] = f"/tasks/{task.id}"
    task.network = await networks.task_network(namespace, task.id)
    return task


@router.get(
    "",
    summary="List tasks",
    description="A page at a time, by id: `limit` and `after`, as `GET /containers`.",
    responses=problems(400, 404, 422),
)
async def list_tasks(
    namespace: NamespaceHeader, tasks: Tasks, page: PageQuery, request: Request, response: Response
) -> TaskList:
    # Tasks are few (each is a process tree on this host) and small: the page is cut
    # here from the whole list, which the task store reads in two statements anyway.
    listed = [task for task in await tasks.find(namespace) if task.id > page.after]
    found = cut(listed, page, key=lambda task: task.id, size=lambda task: 300 + 200 * len(task.processes))
    link_next_page(request, response, found.next_cursor)
    return TaskList(tasks=found.items, next_cursor=found.next_cursor)


@router.get("/{container_id}", summary="Get a task", responses=problems(*TASK_PROBLEMS))
async def get_task(container_id: ContainerId, namespace: NamespaceHeader, tasks: Tasks, networks: Networks) -> Task:
    task = await tasks.get(namespace, container_id)
    task.network = await networks.task_network(namespace, container_id)
    return task


@router.post("/{container_id}/start", summary="Start a created task", responses=problems(*TASK_PROBLEMS))
async def start_task(container_id: ContainerId, namespace: NamespaceHeader, tasks: Tasks) -> Task:
    return await tasks.start(namespace, container_id)


@router.post(
    "/{container_id}/kill", status_code=204, summary="Signal a task", responses=problems(*TASK_PROBLEMS, 413, 422)
)
async def kill_task(container_id: ContainerId, body: KillRequest, namespace: NamespaceHeader, tasks: Tasks) -> Response:
    await tasks.kill(namespace, container_id, body)
    return Response(status_code=204)


@router.post("/{container_id}/pause", summary="Freeze a running task", responses=problems(*TASK_PROBLEMS))
async def pause_task(container_id: ContainerId, namespace: NamespaceHeader, tasks: Tasks) -> Task:
    return await tasks.pause(namespace, container_id)


@router.post("/{container_id}/resume", summary="Thaw a paused task", responses=problems(*TASK_PROBLEMS))
async def resume_task(container_id: ContainerId, namespace: NamespaceHeader, tasks: Tasks) -> Task:
    return await tasks.resume(namespace, container_id)


@router.get("/{container_id}/pids", summary="Processes of a task", responses=problems(*TASK_PROBLEMS))
async def list_task_pids(container_id: ContainerId, namespace: NamespaceHeader, tasks: Tasks) -> PidList:
    return PidList(pids=await tasks.pids(namespace, container_id))


@router.patch(
    "/{container_id}",
    summary="Update a task's resources live (cgroup)",
    responses=problems(*TASK_PROBLEMS, 413, 422),
)
async def update_task(container_id: ContainerId, body: TaskPatch, namespace: NamespaceHeader, tasks: Tasks) -> Task:
    return await tasks.update(namespace, container_id, body.resources)


@router.get(
    "/{container_id}/metrics", summary="The monitor's latest cgroup figures for a task", responses=problems(400, 404)
)
async def get_task_metrics(
    container_id: ContainerId, namespace: NamespaceHeader, tasks: Tasks, networks: Networks
) -> TaskMetrics:
    metrics = await tasks.metrics(namespace, container_id)
    metrics.network_receive_bytes, metrics.network_transmit_bytes = networks.task_counters(namespace, container_id)
    return metrics


@router.post(
    "/{container_id}/wait",
    summary="Wait for a task to exit",
    description="Long-polls until the task exits; after it has, answers at once from the stored exits.",
    responses=problems(400, 404),
)
async def wait_task(container_id: ContainerId, namespace: NamespaceHeader, tasks: Tasks) -> Exit:
    return await tasks.wait(namespace, container_id)


@router.delete(
    "/{container_id}", summary="Kill (if needed) and delete a task", responses=problems(*TASK_PROBLEMS)
)
async def delete_task(container_id: ContainerId, namespace: NamespaceHeader, tasks: Tasks) -> Exit:
    return await tasks.delete(namespace, container_id)


# The reader keeps the last `tail` lines in a deque, whose length is a C ssize_t.
MAX_TAIL = 2**63 - 1


class LogQuery:
    """What a log request asks for: the query parameters and whether it wants SSE."""

    def __init__(
        self,
        tail: Annotated[int | None, Query(ge=0, le=MAX_TAIL, description="only the last N lines")] = None,
        since: Annotated[datetime | None, Query(description="only lines after this RFC 3339 time")] = None,
        follow: Annotated[bool, Query(description="keep streaming while it runs")] = False,
        accept: Annotated[str | None, Header()] = None,
    ) -> None:
        self.tail = tail
        self.since = since
        self.follow = follow
        self.as_sse = follow and accept is not None and "text/event-stream" in accept

    async def respond(
        self,
        tasks: TaskService,
        namespace: str,
        task_id: str,
        exec_id: str | None,
        settings: Settings,
        streams: ClientStreams,
        client: str,
    ) -> Response:
        lines = await tasks.logs(
            namespace, task_id, exec_id, tail=self.tail, since=self.since, follow=self.follow,
            max_line_bytes=settings.log_line_max_bytes,
        )
        # A follow is a stream held open: it counts against the client's streams.
        release = streams.acquire(client, "a log follow") if self.follow else _nothing
        response: Response
        if self.as_sse:

            async def frames() -> AsyncIterator[ServerSentEvent]:
                try:
                    async for line in lines:
                        yield ServerSentEvent(data=line.model_dump_json(), event=line.stream)
                finally:
                    await _close(lines)

            response = event_source(frames(), settings)
        else:

            async def json_lines() -> AsyncIterator[bytes]:
                try:
                    async for line in lines:
                        yield line.model_dump_json().encode() + b"\n"
                finally:
                    await _close(lines)

            response = StreamingResponse(json_lines(), media_type="application/x-ndjson")
        return held_while_sent(response, release)


def _nothing() -> None:
    pass


async def _close(lines: AsyncIterator[LogLine]) -> None:
    """Close the log reader (and its file) now, even when the response was cancelled (the
    client went away): not whenever the garbage collector gets to it."""
    aclose = getattr(lines, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True):
            await aclose()


LogQueryDep = Annotated[LogQuery, Depends()]


@router.get(
    "/{container_id}/logs",
    summary="Read a task's output",
    response_class=StreamingResponse,
    responses={**LOG_RESPONSES, **problems(400, 404, 422, 429)},
)
async def get_task_logs(
    container_id: ContainerId,
    namespace: NamespaceHeader,
    tasks: Tasks,
    daemon: DaemonDep,
    query: LogQueryDep,
    streams: Streams,
    request: Request,
) -> Response:
    return await query.respond(
        tasks, namespace, container_id, None, daemon.settings, streams, client_key(request)
    )


@router.post(
    "/{container_id}/processes",
    status_code=201,
    summary="Add an exec process to a running task",
    responses=problems(*TASK_PROBLEMS, 413, 422),
)
async def add_task_process(
    container_id: ContainerId, body: ExecCreate, namespace: NamespaceHeader, tasks: Tasks, response: Response
) -> Process:
    process = await tasks.add_exec(namespace, container_id, body)
    response.headers["Location"] = f"/tasks/{container_id}/processes/{process.exec_id}"
    return process


@router.post(
    "/{container_id}/processes/{exec_id}/start",
    summary="Start an exec process",
    responses=problems(*TASK_PROBLEMS, 422),
)
async def start_task_process(
    container_id: ContainerId, exec_id: ExecId, namespace: NamespaceHeader, tasks: Tasks
) -> Process:
    return await tasks.start_exec(namespace, container_id, exec_id)


@router.post(
    "/{container_id}/processes/{exec_id}/kill",
    status_code=204,
    summary="Signal an exec process",
    responses=problems(*TASK_PROBLEMS, 413, 422),
)
async def kill_task_process(
    container_id: ContainerId, exec_id: ExecId, body: KillRequest, namespace: NamespaceHeader, tasks: Tasks
) -> Response:
    await tasks.kill_exec(namespace, container_id, exec_id, body)
    return Response(status_code=204)


@router.post(
    "/{container_id}/processes/{exec_id}/wait", summary="Wait for an exec process to exit", responses=problems(400, 404)
)
async def wait_task_process(
    container_id: ContainerId, exec_id: ExecId, namespace: NamespaceHeader, tasks: Tasks
) -> Exit:
    return await tasks.wait(namespace, container_id, exec_id)


@router.get(
    "/{container_id}/processes/{exec_id}/logs",
    summary="Read an exec process's output",
    response_class=StreamingResponse,
    responses={**LOG_RESPONSES, **problems(400, 404, 422, 429)},
)
async def get_task_process_logs(
    container_id: ContainerId,
    exec_id: ExecId,
    namespace: NamespaceHeader,
    tasks: Tasks,
    daemon: DaemonDep,
    query: LogQueryDep,
    streams: Streams,
    request: Request,
) -> Response:
    return await query.respond(
        tasks, namespace, container_id, exec_id, daemon.settings, streams, client_key(request)
    )
