"""/events: every change publishes its topic; the SSE stream (frames, filters, replay with
`since` and `Last-Event-ID`, heartbeats, a stalled subscriber) against a real uvicorn on
a unix socket; /events/history pages; the daemon's event and subscriber metrics."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.events import EventService
from app.store.events import EventStore
from tests.api.events import (
    assert_increasing,
    check_frame,
    create,
    history,
    sse,
)
from tests.conftest import container_body, running_server, uds_client, wait_for

pytestmark = pytest.mark.anyio

MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
PROBLEM = "application/problem+json"


async def last_event_id(client: httpx.AsyncClient) -> int:
    events = await history(client)
    return int(events[-1]["id"]) if events else 0


# --- Every change publishes its topic ----------------------------------------------

NS = "<ns>"  # replaced by the test's namespace
IMAGE = "docker.io/library/busybox:1.36"
CREATED_WEB = {"id": "web", "image": IMAGE, "runtime": "runc", "labels": {"tier": "web"}, "snapshot_key": ""}
Op = tuple[str, str, dict[str, Any] | None, int]  # method, path, body, expected status

NEW_NS: Op = ("POST", "/namespaces", {"name": NS, "labels": {"team": "a"}}, 201)
NEW_WEB: Op = ("POST", "/containers", container_body("web", image=IMAGE, labels={"tier": "web"}), 201)


def _fill(value: Any, namespace: str) -> Any:
    if value == NS:
        return namespace
    if isinstance(value, str):
        return value.replace(NS, namespace)
    if isinstance(value, dict):
        return {key: _fill(item, namespace) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_fill(item, namespace) for item in value)
    return value


async def perform(client: httpx.AsyncClient, op: Op, namespace: str) -> None:
    method, path, body, status = _fill(op, namespace)
    headers = {"Cargohold-Namespace": namespace}
    if method == "PATCH":
        headers.update(MERGE_PATCH)
        if path.startswith("/containers/") and body.pop("__if_match__", None):
            headers["If-Match"] = '"not-the-etag"'
    content = None if body is None else json.dumps(body)
    if method == "POST":
        headers["Content-Type"] = "application/json"
    response = await client.request(method, path, content=content, headers=headers)
    assert response.status_code == status, f"{method} {path}: {response.text}"


@pytest.mark.parametrize(
    ("setup", "action", "expected"),
    [
        pytest.param(
            [], NEW_NS, [("/namespaces/create", {"name": NS, "labels": {"team": "a"}})], id="namespace-create"
        ),
        pytest.param(
            [NEW_NS],
            ("PATCH", f"/namespaces/{NS}", {"labels": {"team": None, "tier": "db"}}, 200),
            [("/namespaces/update", {"name": NS, "labels": {"tier": "db"}})],
            id="namespace-update",
        ),
        pytest.param(
            [NEW_NS],
            ("DELETE", f"/namespaces/{NS}", None, 204),
            [("/namespaces/delete", {"name": NS})],
            id="namespace-delete",
        ),
        pytest.param(
            [],
            NEW_WEB,
            [("/namespaces/create", {"name": NS, "labels": {}}), ("/containers/create", CREATED_WEB)],
            id="container-create-first-in-namespace",
        ),
        pytest.param([NEW_NS], NEW_WEB, [("/containers/create", CREATED_WEB)], id="container-create"),
        pytest.param(
            [NEW_WEB],
            ("PATCH", "/containers/web", {"labels": {"tier": None, "env": "prod"}, "image": "alpine"}, 200),
            [("/containers/update", {**CREATED_WEB, "image": "alpine", "labels": {"env": "prod"}})],
            id="container-update",
        ),
        pytest.param(
            [NEW_WEB],
            ("DELETE", "/containers/web", None, 204),
            [("/containers/delete", {"id": "web"})],
            id="container-delete",
        ),
        pytest.param([NEW_WEB], (*NEW_WEB[:3], 409), [], id="container-create-conflict-publishes-nothing"),
        pytest.param(
            [NEW_WEB],
            ("PATCH", "/containers/web", {"image": "alpine", "__if_match__": True}, 412),
            [],
            id="container-update-precondition-failed-publishes-nothing",
        ),
        pytest.param(
            [NEW_WEB],
            ("DELETE", f"/namespaces/{NS}", None, 409),
            [],
            id="namespace-delete-nonempty-publishes-nothing",
        ),
        pytest.param([], ("DELETE", "/containers/web", None, 404), [], id="container-delete-missing-publishes-nothing"),
    ],
)
async def test_each_change_publishes_its_topic(
    client: httpx.AsyncClient,
    namespace: str,
    setup: list[Op],
    action: Op,
    expected: list[tuple[str, dict[str, Any]]],
) -> None:
    for op in setup:
        await perform(client, op, namespace)
    baseline = await last_event_id(client)
    before = datetime.now(UTC)
    await perform(client, action, namespace)
    after = datetime.now(UTC)

    events = await history(client, since=baseline)

    assert [(e["topic"], e["namespace"], e["event"]) for e in events] == [
        (topic, namespace, _fill(payload, namespace)) for topic, payload in expected
    ]
    assert_increasing([baseline, *(e["id"] for e in events)])
    for event in events:
        assert before <= datetime.fromisoformat(event["timestamp"]) <= after


# --- The SSE stream ------------------------------------------------------------------


async def test_frames_carry_id_topic_and_the_stored_envelope(live_client: httpx.AsyncClient, namespace: str) -> None:
    async with sse(live_client) as stream:
        for op in (
            NEW_NS,
            NEW_WEB,
            ("PATCH", "/containers/web", {"labels": {"tier": "db"}}, 200),
            ("DELETE", "/containers/web", None, 204),
            ("PATCH", f"/namespaces/{NS}", {"labels": {"team": "b"}}, 200),
            ("DELETE", f"/namespaces/{NS}", None, 204),
        ):
            await perform(live_client, op, namespace)
        frames = await stream.events(6)

    envelopes = [check_frame(frame) for frame in frames]
    assert [e["topic"] for e in envelopes] == [
        "/namespaces/create",
        "/containers/create",
        "/containers/update",
        "/containers/delete",
        "/namespaces/update",
        "/namespaces/delete",
    ]
    assert {e["namespace"] for e in envelopes} == {namespace}
    assert envelopes == await history(live_client)


async def test_stream_without_since_sends_only_new_events(live_client: httpx.AsyncClient, namespace: str) -> None:
    await create(live_client, namespace, "old")
    async with sse(live_client) as stream:
        await create(live_client, namespace, "new")
        (frame,) = await stream.events(1)
    assert check_frame(frame)["event"]["id"] == "new"


async def test_stream_without_since_misses_nothing_committed_once_it_is_open(
    live_client: httpx.AsyncClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream is open when the client has its headers: whatever is committed after that
    is new and must be sent, even when the daemon is slow to read where the log ends (a busy
    reader connection, a slow disk). Subscribe, then act: the pattern every client uses."""
    original = EventStore.last_id

    async def slow_last_id(self: EventStore) -> int:
        await asyncio.sleep(0.3)  # the slowness under test
        return await original(self)

    monkeypatch.setattr(EventStore, "last_id", slow_last_id)
    async with sse(live_client) as stream:
        await create(live_client, namespace, "first")
        await asyncio.sleep(0.5)  # past the slow read: "second" comes after the stream knows its start
        await create(live_client, namespace, "second")
        received: list[dict[str, Any]] = []
        async with asyncio.timeout(3):
            while not received or received[-1]["event"].get("id") != "second":
                (frame,) = await stream.events(1)
                received.append(check_frame(frame))
    assert [(e["topic"], e["event"].get("id", e["event"].get("name"))) for e in received] == [
        ("/namespaces/create", namespace),
        ("/containers/create", "first"),
        ("/containers/create", "second"),
    ]


OTHER = "<ns>-b"


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        pytest.param(
            ['topic~="^/containers/"'],
            [
                (NS, "/containers/create", "db"),
                (OTHER, "/containers/create", "web"),
                (OTHER, "/containers/update", "web"),
                (NS, "/containers/delete", "db"),
                (NS, "/containers/create", "web"),
            ],
            id="topic-regex",
        ),
        pytest.param(
            [f"namespace=={NS}"],
            [
                (NS, "/namespaces/create", NS),
                (NS, "/containers/create", "db"),
                (NS, "/namespaces/update", NS),
                (NS, "/containers/delete", "db"),
                (NS, "/containers/create", "web"),
            ],
            id="namespace",
        ),
        pytest.param(
            ["event.id==web"],
            [
                (OTHER, "/containers/create", "web"),
                (OTHER, "/containers/update", "web"),
                (NS, "/containers/create", "web"),
            ],
            id="event-id",
        ),
        pytest.param(
            ['topic=="/namespaces/update"', f"event.id==web,namespace=={NS}"],
            [(NS, "/namespaces/update", NS), (NS, "/containers/create", "web")],
            id="or-of-ands",
        ),
    ],
)
async def test_stream_filter(
    live_client: httpx.AsyncClient, namespace: str, filters: list[str], expected: list[tuple[str, str, str]]
) -> None:
    other = f"{namespace}-b"
    async with sse(live_client, params={"filter": [_fill(f, namespace) for f in filters]}) as stream:
        await perform(live_client, NEW_NS, namespace)
        await create(live_client, namespace, "db")
        await create(live_client, other, "web")
        await perform(live_client, ("PATCH", "/containers/web", {"labels": {"a": "b"}}, 200), other)
        await perform(live_client, ("PATCH", f"/namespaces/{NS}", {"labels": {"a": "b"}}, 200), namespace)
        await perform(live_client, ("DELETE", "/containers/db", None, 204), namespace)
        # Last, and matched by every filter: anything matched wrongly shows up before it.
        await create(live_client, namespace, "web")
        frames = await stream.events(len(expected))

    got = []
    for frame in frames:
        envelope = check_frame(frame)
        subject = envelope["event"].get("id", envelope["event"].get("name"))
        got.append((envelope["namespace"], envelope["topic"], subject))
    filled = {NS: namespace, OTHER: other}
    assert got == [(filled[ns], topic, filled.get(subject, subject)) for ns, topic, subject in expected]


async def test_since_replays_every_later_event_then_follows_live(
    live_client: httpx.AsyncClient, namespace: str
) -> None:
    for number in range(5):
        await create(live_client, namespace, f"c{number}")
    stored = await history(live_client)
    assert len(stored) == 6  # the namespace, then five containers
    since = stored[2]["id"]

    async with sse(live_client, params={"since": since}) as stream:
        replayed = [check_frame(f) for f in await stream.events(3)]
        await create(live_client, namespace, "live1")
        await create(live_client, namespace, "live2")
        live = [check_frame(f) for f in await stream.events(2)]

    assert replayed == stored[3:]
    assert [e["event"]["id"] for e in live] == ["live1", "live2"]
    assert_increasing([since, *(e["id"] for e in replayed + live)])
    assert replayed + live == (await history(live_client, since=since))


async def test_since_zero_replays_everything_across_store_pages(
    live_client: httpx.AsyncClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More events than one store read are replayed, none missing, none twice."""
    monkeypatch.setattr(EventService, "PAGE", 4)  # store reads of 4 events, not 500
    await perform(live_client, NEW_NS, namespace)
    for number in range(12):
        await perform(live_client, ("PATCH", f"/namespaces/{NS}", {"labels": {"n": str(number)}}, 200), namespace)
    stored = await history(live_client)
    async with sse(live_client, params={"since": 0}) as stream:
        frames = await stream.events(len(stored))
    assert len(stored) == 13
    assert [check_frame(f) for f in frames] == stored


async def test_last_event_id_resumes_after_a_disconnect(live_client: httpx.AsyncClient, namespace: str) -> None:
    async with sse(live_client) as stream:
        for number in range(5):
            await create(live_client, namespace, f"first{number}")
        seen = [check_frame(f) for f in await stream.events(3)]
    resume_from = seen[-1]["id"]
    for number in range(5):  # while no one listens
        await create(live_client, namespace, f"gap{number}")

    async with sse(live_client, headers={"Last-Event-ID": str(resume_from)}) as stream:
        missed = await history(live_client, since=resume_from)
        replayed = [check_frame(f) for f in await stream.events(len(missed))]
        await create(live_client, namespace, "live")
        (live,) = [check_frame(f) for f in await stream.events(1)]

    assert len(missed) == 8  # two more of the first batch, five of the gap, nothing else
    assert replayed == missed
    assert live["event"]["id"] == "live", "the next frame is the live event: nothing replayed twice"
    ids = [e["id"] for e in seen + replayed + [live]]
    assert_increasing(ids)
    assert seen + replayed + [live] == await history(live_client)


async def test_last_event_id_wins_over_since(live_client: httpx.AsyncClient, namespace: str) -> None:
    for number in range(4):
        await create(live_client, namespace, f"c{number}")
    stored = await history(live_client)
    async with sse(live_client, params={"since": 0}, headers={"Last-Event-ID": str(stored[3]["id"])}) as stream:
        (first,) = await stream.events(1)
    assert check_frame(first) == stored[4]


@pytest.mark.parametrize(
    ("params", "headers", "name"),
    [
        pytest.param({"since": "abc"}, {}, "since", id="since-abc"),
        pytest.param({"since": "-1"}, {}, "since", id="since-negative"),
        pytest.param({"since": "1.5"}, {}, "since", id="since-fraction"),
        pytest.param({"since": ""}, {}, "since", id="since-empty"),
        pytest.param({}, {"Last-Event-ID": "abc"}, "Last-Event-ID", id="last-event-id-abc"),
        pytest.param({}, {"Last-Event-ID": "-1"}, "Last-Event-ID", id="last-event-id-negative"),
        pytest.param({"since": "3"}, {"Last-Event-ID": "x"}, "Last-Event-ID", id="bad-last-event-id-beside-since"),
        # Beyond SQLite's INTEGER: bad input, not a stream that dies after its 200.
        pytest.param({"since": str(2**63)}, {}, "since", id="since-beyond-int64"),
        pytest.param({}, {"Last-Event-ID": str(2**63)}, "Last-Event-ID", id="last-event-id-beyond-int64"),
    ],
)
async def test_bad_resume_point_is_400(
    live_client: httpx.AsyncClient, params: dict[str, str], headers: dict[str, str], name: str
) -> None:
    async with asyncio.timeout(5), live_client.stream("GET", "/events", params=params, headers=headers) as response:
        assert response.status_code == 400, f"{response.status_code} {response.headers['content-type']}"
        await response.aread()
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == 400
    assert name in problem["detail"]


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("labels.a=b", id="single-equals"),
        pytest.param('topic~="^/tasks/', id="unterminated-quote"),
        pytest.param("topic~=(", id="bad-regex"),
        pytest.param("", id="empty"),
    ],
)
async def test_bad_filter_is_400_before_the_stream_starts(live_client: httpx.AsyncClient, bad: str) -> None:
    async with asyncio.timeout(5), live_client.stream("GET", "/events", params={"filter": bad}) as response:
        await response.aread()
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["detail"].startswith("filter 1")


async def test_idle_stream_gets_heartbeat_comments(settings: Settings) -> None:
    quick = replace(settings, heartbeat_seconds=0.2)
    async with running_server(quick), uds_client(quick, timeout=30) as live, sse(live) as stream:
        async with asyncio.timeout(3):
            frame = await stream.frame()
    assert frame is not None
    assert frame.comments, f"expected a comment line, got {frame}"
    assert (frame.id, frame.event, frame.data) == (None, None, None)


async def test_stalled_subscriber_blocks_no_one_and_catches_up_from_the_store(
    settings: Settings, namespace: str
) -> None:
    small = replace(settings, subscriber_queue_size=8)
    # ~8 KiB of labels per event: 200 of them (1.6 MB) are far more than the socket buffers
    # and uvicorn's write buffer hold, so the unread stream really stops its sender and
    # its queue of 8 overflows.
    labels = {f"l{n}": "x" * 4000 for n in range(2)}
    count = 200
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    async with (
        running_server(small),
        uds_client(small, timeout=30) as stalled_client,
        uds_client(small, timeout=30, limits=limits) as client,
        sse(stalled_client) as stalled,
        sse(client) as prompt,
    ):
        reading = asyncio.create_task(prompt.events(count + 1, within=20))
        # Publishers blocked by the stalled stream would hang here.
        async with asyncio.timeout(15):
            await asyncio.gather(*(create(client, namespace, f"c{n}", labels=labels) for n in range(count)))
        # The other subscriber keeps pace: it has everything soon after the last create.
        loop = asyncio.get_running_loop()
        done = loop.time()
        live = await asyncio.wait_for(reading, 3)
        behind = loop.time() - done

        stored = await history(client)
        caught_up = await stalled.events(len(stored), within=10)
        await create(client, namespace, "after")
        (after,) = await stalled.events(1)

    assert behind < 2, f"the prompt subscriber trailed the publishers by {behind:.1f}s"
    assert len(stored) == count + 1
    assert [check_frame(f) for f in live] == stored
    assert [check_frame(f) for f in caught_up] == stored, "every event once, in order, after the stall"
    assert check_frame(after)["event"]["id"] == "after"


async def test_subscriber_gauge_follows_open_streams(live_client: httpx.AsyncClient) -> None:
    async def subscribers() -> float:
        return metric_value(await metrics_text(live_client), "cargohold_sse_subscribers")

    async def until(value: float) -> None:
        async def reached() -> bool:
            return await subscribers() == value

        await wait_for(reached, f"cargohold_sse_subscribers is {value}", 5)

    assert await subscribers() == 0
    async with sse(live_client):
        await until(1)
    await until(0)  # the daemon noticed the client went away and unsubscribed


async def test_events_total_counts_by_topic(client: httpx.AsyncClient, namespace: str) -> None:
    for number in range(3):
        await create(client, namespace, f"c{number}")
    await perform(client, ("DELETE", "/containers/c0", None, 204), namespace)
    text = await metrics_text(client)
    assert metric_value(text, "cargohold_events_total", topic="/containers/create") == 3
    assert metric_value(text, "cargohold_events_total", topic="/namespaces/create") == 1
    assert metric_value(text, "cargohold_events_total", topic="/containers/delete") == 1
    await create(client, namespace, "c9")
    assert metric_value(await metrics_text(client), "cargohold_events_total", topic="/containers/create") == 4


async def metrics_text(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return response.text


def metric_value(text: str, sample_name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {sample_name}{labels} in /metrics")


# --- /events/history -----------------------------------------------------------------


async def test_history_pages_with_since_limit_and_last_id(client: httpx.AsyncClient, namespace: str) -> None:
    for number in range(9):
        await create(client, namespace, f"c{number}")
    everything = await history(client)
    assert len(everything) == 10
    ids = [e["id"] for e in everything]
    assert_increasing(ids)

    pages = []
    since = 0
    for _ in range(4):
        response = await client.get("/events/history", params={"since": since, "limit": 4})
        assert response.status_code == 200
        page = response.json()
        pages.append([e["id"] for e in page["events"]])
        since = page["last_id"]
    assert pages == [ids[0:4], ids[4:8], ids[8:10], []]
    assert since == ids[-1], "an empty page keeps last_id where it was"


async def test_history_filters_and_last_id_where_the_scan_stopped(client: httpx.AsyncClient, namespace: str) -> None:
    other = f"{namespace}-b"
    for number in range(3):
        await create(client, namespace, f"c{number}")
        await create(client, other, f"c{number}")
    everything = await history(client)

    async def page(**params: Any) -> dict[str, Any]:
        response = await client.get("/events/history", params=params)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    in_other = await page(filter=f"namespace=={other}", limit=2)
    assert [(e["namespace"], e["topic"]) for e in in_other["events"]] == [
        (other, "/namespaces/create"),
        (other, "/containers/create"),
    ]
    assert in_other["last_id"] == in_other["events"][-1]["id"]
    rest = await page(filter=f"namespace=={other}", since=in_other["last_id"])
    assert [e["event"]["id"] for e in rest["events"]] == ["c1", "c2"]

    either = await page(filter=["event.id==c2", 'topic=="/namespaces/create"'])
    assert [(e["topic"], e["event"].get("id", e["event"].get("name"))) for e in either["events"]] == [
        ("/namespaces/create", namespace),
        ("/namespaces/create", other),
        ("/containers/create", "c2"),
        ("/containers/create", "c2"),
    ]
    nothing = await page(filter='topic=="/tasks/exit"')
    assert nothing == {"events": [], "last_id": everything[-1]["id"]}


async def test_history_filter_scans_beyond_one_store_read(
    client: httpx.AsyncClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(EventService, "PAGE", 4)  # store reads of 4 events, not 500
    await perform(client, NEW_NS, namespace)
    for number in range(13):
        await perform(client, ("PATCH", f"/namespaces/{NS}", {"labels": {"n": str(number)}}, 200), namespace)
    everything = await history(client)
    ids = [e["id"] for e in everything]

    response = await client.get("/events/history", params={"filter": 'event.labels.n~="^(5|6|11|12)$"', "limit": 3})
    assert response.status_code == 200
    page = response.json()
    assert [e["event"]["labels"]["n"] for e in page["events"]] == ["5", "6", "11"]
    assert page["last_id"] == ids[12], "stopped at the third match"
    response = await client.get(
        "/events/history", params={"filter": 'event.labels.n~="^(5|6|11|12)$"', "since": page["last_id"]}
    )
    assert [e["event"]["labels"]["n"] for e in response.json()["events"]] == ["12"]
    assert response.json()["last_id"] == ids[-1]


@pytest.mark.parametrize(
    ("params", "status", "count"),
    [
        pytest.param({"limit": 0}, 422, 0, id="limit-0"),
        pytest.param({"limit": 1001}, 422, 0, id="limit-1001"),
        pytest.param({"limit": "x"}, 422, 0, id="limit-not-a-number"),
        pytest.param({"since": -1}, 422, 0, id="since-negative"),
        pytest.param({"since": "abc"}, 422, 0, id="since-not-a-number"),
        pytest.param({"since": 2**63}, 422, 0, id="since-beyond-int64"),
        pytest.param({"filter": "labels.a=b"}, 400, 0, id="bad-filter"),
        pytest.param({"limit": 1}, 200, 1, id="limit-1"),
        pytest.param({"limit": 1000}, 200, 2, id="limit-1000"),
        pytest.param({}, 200, 2, id="defaults"),
        pytest.param({"since": 2**63 - 1}, 200, 0, id="since-int64-max"),
    ],
)
async def test_history_bounds(
    client: httpx.AsyncClient, namespace: str, params: dict[str, Any], status: int, count: int
) -> None:
    await create(client, namespace, "web")  # two events: the namespace and the container
    response = await client.get("/events/history", params=params)
    assert response.status_code == status, response.text
    if status != 200:
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["status"] == status
    else:
        assert len(response.json()["events"]) == count
