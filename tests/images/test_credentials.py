"""Registry credentials never leave the request that carried them: pulls and pushes with basic
credentials and through the bearer-token flow (right and wrong), then the password, its base64
`user:password` pair and every token are looked for in every answer (problem+json details, SSE
frames), the events, the daemon's log at DEBUG (httpx's and httpcore's loggers included) and
every file the daemon wrote (the sqlite database, its -wal and -shm, the content store)."""

from __future__ import annotations

import base64
import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.images.registry import Credentials
from app.models import ImagePull, ImagePush, RegistryCredentials
from tests.images.conftest import PASSWORD, REPOSITORY, TOKEN_SERVICE, USERNAME, Registry, TokenServer

pytestmark = [pytest.mark.anyio, pytest.mark.registry]


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Everything logged at DEBUG: the daemon's loggers and the HTTP client's own."""
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "app", "uvicorn"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def wrong_password() -> str:
    return f"wrong-{uuid.uuid4().hex}"


def forms(username: str, password: str) -> list[str]:
    """How a password could show: as given, and inside a Basic Authorization header."""
    pair = f"{username}:{password}".encode()
    return [password, base64.b64encode(pair).decode(), base64.urlsafe_b64encode(pair).decode().rstrip("=")]


class Seen:
    """Every text the daemon gave back or wrote, for a secret to be looked for in."""

    def __init__(self, api: httpx.AsyncClient, settings: Settings, logs: pytest.LogCaptureFixture) -> None:
        self.api = api
        self.settings = settings
        self.logs = logs
        self.answers: list[str] = []

    async def call(self, method: str, url: str, expected: int, **kwargs: Any) -> httpx.Response:
        response = await self.api.request(method, url, **kwargs)
        self.answers.append(f"{response.status_code} {response.headers} {response.text}")
        assert response.status_code == expected, response.text
        return response

    def files(self) -> dict[Path, bytes]:
        found = {}
        for top in (self.settings.root, self.settings.state):
            for path in top.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    found[path] = path.read_bytes()
        return found

    async def assert_nowhere(self, secrets: list[str]) -> None:
        events = await self.api.get("/events/history", params={"limit": 1000})
        assert events.status_code == 200
        assert events.json()["events"], "no event at all: the check would see nothing"
        logged = self.logs.text
        assert "HTTP Request:" in logged, "httpx's log was not captured: the check would see nothing"
        database = self.settings.database_path
        files = self.files()
        assert database in files and database.with_name(database.name + "-wal") in files
        for secret in secrets:
            assert len(secret) >= 12
            for answer in self.answers:
                assert secret not in answer
            assert secret not in events.text
            assert secret not in logged
            for record in self.logs.records:
                assert secret not in repr(record.args) and secret not in str(record.msg)
            for path, data in files.items():
                assert secret.encode() not in data, f"{secret[:6]}... is in {path}"


def pull_body(reference: str, credentials: dict[str, str] | None, **extra: Any) -> dict[str, Any]:
    return {"reference": reference, "plain_http": True, "unpack": False, "credentials": credentials, **extra}


def push_body(reference: str, credentials: dict[str, str] | None) -> dict[str, Any]:
    return {"reference": reference, "plain_http": True, "credentials": credentials}


async def test_basic_credentials_leave_no_trace(api: httpx.AsyncClient, headers: dict[str, str],
                                                auth_registry: Registry, settings: Settings,
                                                debug_logs: pytest.LogCaptureFixture, namespace: str) -> None:
    seen = Seen(api, settings, debug_logs)
    right = {"username": USERNAME, "password": PASSWORD}
    wrong = wrong_password()
    bad = {"username": USERNAME, "password": wrong}
    source = f"{auth_registry.host}/{REPOSITORY}:latest"

    response = await seen.call("POST", "/images/pull", 201, json=pull_body(source, right), headers=headers)
    name = response.json()["name"]
    refused = await seen.call("POST", "/images/pull", 401, json=pull_body(source, bad), headers=headers)
    assert "refused the credentials" in refused.json()["detail"]
    # The progress stream's error frame too.
    frames = await seen.call("POST", "/images/pull", 200, json=pull_body(source, bad),
                             headers={**headers, "Accept": "text/event-stream"})
    assert "event: error" in frames.text and "refused the credentials" in frames.text
    await seen.call("POST", f"/images/{name}/push", 401, headers=headers,
                    json=push_body(f"{auth_registry.host}/leak-{namespace}/busybox:v1", bad))
    await seen.call("POST", f"/images/{name}/push", 200, headers=headers,
                    json=push_body(f"{auth_registry.host}/leak-{namespace}/busybox:v1", right))
    # A body that fails validation is not echoed either.
    await seen.call("POST", "/images/pull", 422, headers=headers,
                    json={**pull_body(source, bad), "credentials": {**bad, "extra": wrong}})
    await seen.call("POST", "/images/pull", 422, headers=headers,
                    json={**pull_body(source, bad), "credentials": {"username": USERNAME, "password": [wrong]}})

    await seen.assert_nowhere([*forms(USERNAME, PASSWORD), *forms(USERNAME, wrong)])


async def test_token_flow_credentials_and_tokens_leave_no_trace(
        api: httpx.AsyncClient, headers: dict[str, str], token_registry: Registry, token_server: TokenServer,
        settings: Settings, debug_logs: pytest.LogCaptureFixture, namespace: str) -> None:
    seen = Seen(api, settings, debug_logs)
    right = {"username": USERNAME, "password": PASSWORD}
    wrong = wrong_password()
    source = f"{token_registry.host}/{REPOSITORY}:latest"
    issued = len(token_server.issued)

    response = await seen.call("POST", "/images/pull", 201, json=pull_body(source, right), headers=headers)
    name = response.json()["name"]
    refused = await seen.call("POST", "/images/pull", 401, headers=headers,
                              json=pull_body(source, {"username": USERNAME, "password": wrong}))
    assert "token service" in refused.json()["detail"]
    await seen.call("POST", f"/images/{name}/push", 200, headers=headers,
                    json=push_body(f"{token_registry.host}/leak-{namespace}/busybox:v1", right))
    await seen.call("POST", f"/images/{name}/push", 401, headers=headers,
                    json=push_body(f"{token_registry.host}/denied-{namespace}/busybox:v1",
                                   {"username": USERNAME, "password": wrong}))
    # A token given by the caller, obtained beforehand from the token service.
    async with httpx.AsyncClient(trust_env=False) as direct:
        answer = await direct.get(f"{token_server.url}/token", auth=(USERNAME, PASSWORD), params={
            "service": TOKEN_SERVICE, "scope": f"repository:{REPOSITORY}:pull"})
    obtained = answer.json()["token"]
    await seen.call("POST", "/images/pull", 201, headers={"Cargohold-Namespace": f"{namespace}-t"},
                    json=pull_body(source, {"token": obtained}))
    bogus = f"bogus-token-{uuid.uuid4().hex}"
    refused = await seen.call("POST", "/images/pull", 401, headers=headers, json=pull_body(source, {"token": bogus}))
    assert "refused the token" in refused.json()["detail"]

    tokens = token_server.issued[issued:]
    assert len(tokens) >= 3  # the pull's, the push's, the one obtained by hand
    # A whole token, and its signature alone (a token cut short in a log line would still leak it).
    secrets = [*forms(USERNAME, PASSWORD), *forms(USERNAME, wrong), bogus]
    secrets += [form for token in tokens for form in (token, token.rsplit(".", 1)[1][:40])]
    await seen.assert_nowhere(secrets)


def test_credentials_are_not_in_any_repr() -> None:
    """What a log line or a traceback would print of a request or of the client's credentials."""
    secret = wrong_password()
    credentials = RegistryCredentials(username=USERNAME, password=secret, token=secret)
    for text in (repr(credentials), str(credentials),
                 repr(ImagePull(reference="busybox", credentials=credentials)),
                 repr(ImagePush(reference="busybox", credentials=credentials)),
                 repr(Credentials(USERNAME, secret, secret))):
        assert secret not in text
        assert USERNAME in text
