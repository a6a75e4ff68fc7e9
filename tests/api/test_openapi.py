"""The OpenAPI description: committed without drift, complete enough to be a contract, and
good enough that openapi-python-client generates a client that works against a live daemon.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.api.deps import namespace_header
from app.config import Settings
from app.main import create_app
from tests.conftest import BASE_URL, container_body

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "openapi" / "openapi.json"
PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"
NAMESPACE_HEADER = "Cargohold-Namespace"
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
# The verbs an operationId may start with; a new one is a deliberate choice, added here.
VERBS = frozenset({
    "add", "collect", "commit", "create", "delete", "export", "get", "import", "kill", "list", "pause", "prepare",
    "pull", "push", "remove", "resize", "resume", "start", "stream", "update", "wait",
})
OPERATION_ID = re.compile(r"^(?P<verb>[a-z]+)(?:_[a-z0-9]+)+$")
# Every route with a body is behind BodyLimitMiddleware (413); a JSON body can also be
# malformed (400) or fail validation (422).
BODY_PROBLEMS = ("413",)
JSON_BODY_PROBLEMS = ("400", "413", "422")
GENERATOR_TIMEOUT = 120
CLIENT_PACKAGE = "cargohold_openapi_test_client"

Operation = tuple[str, str, dict[str, Any]]

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def app_spec() -> dict[str, Any]:
    """The app's description as `cargohold openapi` writes it (through JSON)."""
    spec: dict[str, Any] = json.loads(json.dumps(create_app(Settings(listeners=())).openapi()))
    return spec


def _operations(spec: dict[str, Any]) -> Iterator[Operation]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), path, operation


def _fail_listing(what: str, violations: list[str]) -> None:
    if violations:
        pytest.fail(f"{len(violations)} {what}:\n  " + "\n  ".join(violations), pytrace=False)


# --- 1. drift ----------------------------------------------------------------------------


def _schemas(spec: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = spec.get("components", {}).get("schemas", {})
    return schemas


def _drift(committed: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs, by path and schema, so the failure says where."""
    lines: list[str] = []
    for section, old, new in (
        ("path", committed.get("paths", {}), current.get("paths", {})),
        ("schema", _schemas(committed), _schemas(current)),
    ):
        lines += [f"{section} {name} is missing from openapi/openapi.json" for name in sorted(new.keys() - old.keys())]
        lines += [f"{section} {name} is gone from the app" for name in sorted(old.keys() - new.keys())]
        lines += [f"{section} {name} differs" for name in sorted(old.keys() & new.keys()) if old[name] != new[name]]
    rest = sorted(key for key in committed.keys() | current.keys() if key not in ("paths", "components"))
    lines += [f"top-level {key!r} differs" for key in rest if committed.get(key) != current.get(key)]
    return lines or ["(components other than schemas differ)"]


def test_committed_openapi_matches_the_app(app_spec: dict[str, Any]) -> None:
    committed = json.loads(COMMITTED.read_text())
    if committed != app_spec:
        details = _drift(committed, app_spec)
        shown = details[:40] + ([f"... and {len(details) - 40} more"] if len(details) > 40 else [])
        pytest.fail(
            "openapi/openapi.json is out of date with the app: run `make openapi` and commit "
            "openapi/openapi.json\n  " + "\n  ".join(shown),
            pytrace=False,
        )


# --- 2. quality --------------------------------------------------------------------------


def test_every_operation_has_a_summary(app_spec: dict[str, Any]) -> None:
    _fail_listing(
        "operations without a summary",
        [f"{method} {path}" for method, path, op in _operations(app_spec) if not str(op.get("summary", "")).strip()],
    )


def test_operation_ids_are_unique_snake_case_verb_noun(app_spec: dict[str, Any]) -> None:
    violations: list[str] = []
    seen: dict[str, str] = {}
    for method, path, op in _operations(app_spec):
        where = f"{method} {path}"
        operation_id = op.get("operationId")
        if not isinstance(operation_id, str):
            violations.append(f"{where}: no operationId")
            continue
        match = OPERATION_ID.match(operation_id)
        if match is None:
            violations.append(f"{where}: operationId {operation_id!r} is not snake_case verb_noun")
        elif match["verb"] not in VERBS:
            violations.append(f"{where}: operationId {operation_id!r} starts with an unknown verb {match['verb']!r}")
        if operation_id in seen:
            violations.append(f"{where}: operationId {operation_id!r} is also used by {seen[operation_id]}")
        seen[operation_id] = where
    _fail_listing("bad operationIds", violations)


def test_request_bodies_are_typed(app_spec: dict[str, Any]) -> None:
    violations: list[str] = []
    for method, path, op in _operations(app_spec):
        body = op.get("requestBody")
        if body is None:
            continue
        content = body.get("content") or {}
        if not content:
            violations.append(f"{method} {path}: request body without content")
        for media_type, media in content.items():
            if not media.get("schema"):
                violations.append(f"{method} {path}: request body {media_type} has no schema")
    _fail_listing("untyped request bodies", violations)


def test_success_responses_are_typed(app_spec: dict[str, Any]) -> None:
    violations: list[str] = []
    for method, path, op in _operations(app_spec):
        where = f"{method} {path}"
        successes = {status: response for status, response in op["responses"].items() if status.startswith("2")}
        if not successes:
            violations.append(f"{where}: no 2xx response")
        for status, response in successes.items():
            content = response.get("content") or {}
            if status == "204":
                if content:
                    violations.append(f"{where}: 204 documents a body ({', '.join(content)})")
                continue
            if not content:
                violations.append(f"{where}: {status} has no content")
            for media_type, media in content.items():
                if not media.get("schema"):
                    violations.append(f"{where}: {status} {media_type} has no schema")
    _fail_listing("untyped success responses", violations)


def test_error_responses_are_problem_json(app_spec: dict[str, Any]) -> None:
    """The app answers every error with `problem_response`: problem+json, the Problem shape,
    and nothing else. FastAPI's stock 422 (HTTPValidationError as application/json) is not
    what the app sends."""
    found: dict[str, dict[str, list[str]]] = {}  # issue -> operation -> statuses

    def flag(issue: str, method: str, path: str, status: str) -> None:
        found.setdefault(issue, {}).setdefault(f"{method} {path}", []).append(status)

    for method, path, op in _operations(app_spec):
        for status, response in op["responses"].items():
            if not status.startswith(("4", "5")):
                continue
            content = response.get("content") or {}
            if PROBLEM_MEDIA_TYPE not in content:
                flag(f"no {PROBLEM_MEDIA_TYPE} at all", method, path, status)
            else:
                schema = content[PROBLEM_MEDIA_TYPE].get("schema")
                if not schema or schema.get("$ref") != PROBLEM_REF:
                    issue = f"{PROBLEM_MEDIA_TYPE} with schema {schema or 'none'}, not {PROBLEM_REF}"
                    flag(issue, method, path, status)
            for media_type, media in content.items():
                if media_type != PROBLEM_MEDIA_TYPE:
                    ref = (media.get("schema") or {}).get("$ref", "no schema")
                    flag(f"also {media_type} ({ref}), which the app never serves", method, path, status)
    violations = [
        f"{issue} [{sum(len(s) for s in where.values())} responses]:\n    "
        + "\n    ".join(f"{operation} {' '.join(statuses)}" for operation, statuses in where.items())
        for issue, where in found.items()
    ]
    _fail_listing("kinds of error response not documented as problem+json with the Problem schema", violations)


def test_body_errors_are_documented(app_spec: dict[str, Any]) -> None:
    violations: list[str] = []
    for method, path, op in _operations(app_spec):
        body = op.get("requestBody")
        if body is None:
            continue
        is_json = any(m == "application/json" or m.endswith("+json") for m in body.get("content", {}))
        missing = [s for s in (JSON_BODY_PROBLEMS if is_json else BODY_PROBLEMS) if s not in op["responses"]]
        if missing:
            violations.append(f"{method} {path}: does not document {', '.join(missing)}")
    _fail_listing("operations with a body that omit its errors", violations)


def _uses(dependant: Dependant, call: object) -> bool:
    return any(dep.call is call or _uses(dep, call) for dep in dependant.dependencies)


def _api_routes(app: FastAPI) -> Iterator[Any]:
    """The app's API routes with their full paths, whether or not FastAPI nests included
    routers (it does from 0.13x: `iter_route_contexts` flattens them)."""
    iter_route_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if iter_route_contexts is None:
        yield from (route for route in app.routes if isinstance(route, APIRoute))
        return
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            yield context


def test_namespaced_routes_document_the_namespace_header(app_spec: dict[str, Any]) -> None:
    namespaced = [
        (method, route.path_format)
        for route in _api_routes(create_app(Settings(listeners=())))
        if route.include_in_schema and _uses(route.dependant, namespace_header)
        for method in sorted(route.methods)
    ]
    assert namespaced, "no route takes the namespace header: has namespace_header moved?"
    violations: list[str] = []
    for method, path in namespaced:
        op = app_spec["paths"].get(path, {}).get(method.lower())
        if op is None:
            violations.append(f"{method} {path}: not in the OpenAPI description")
            continue
        headers = [p for p in op.get("parameters", []) if p.get("in") == "header" and p.get("name") == NAMESPACE_HEADER]
        if not headers:
            violations.append(f"{method} {path}: takes {NAMESPACE_HEADER} but does not document it")
        elif not headers[0].get("description") or not headers[0].get("schema"):
            violations.append(f"{method} {path}: {NAMESPACE_HEADER} without a description or schema")
    _fail_listing(f"routes that hide {NAMESPACE_HEADER}", violations)


# --- 3. the generated client -------------------------------------------------------------


@dataclass
class Generated:
    returncode: int
    output: list[str]
    package: str | None  # importable when generation produced the package

    def module(self, name: str = "") -> Any:
        """The generated package, or one of its modules by relative dotted name."""
        assert self.package is not None, "openapi-python-client produced no package:\n" + "\n".join(self.output)
        return importlib.import_module(f"{self.package}.{name}" if name else self.package)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generated]:
    """openapi-python-client run once on the committed description, its package importable."""
    root = tmp_path_factory.mktemp("openapi-client")
    config = root / "config.json"
    # No post hooks: they run ruff from PATH, which says nothing about our schema.
    config.write_text(json.dumps({
        "package_name_override": CLIENT_PACKAGE,
        "project_name_override": CLIENT_PACKAGE,
        "post_hooks": [],
    }))
    output_path = root / CLIENT_PACKAGE
    try:
        completed = subprocess.run(
            [
                sys.executable, "-m", "openapi_python_client", "generate",
                "--path", str(COMMITTED),
                "--output-path", str(output_path),
                "--meta", "none",
                "--config", str(config),
            ],
            cwd=root, capture_output=True, text=True, timeout=GENERATOR_TIMEOUT, check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"openapi-python-client did not finish within {GENERATOR_TIMEOUT}s", pytrace=False)
    lines = [line.rstrip() for line in (completed.stdout + completed.stderr).splitlines()]
    generated = (output_path / "__init__.py").exists()
    sys.path.insert(0, str(root))
    try:
        yield Generated(completed.returncode, lines, CLIENT_PACKAGE if generated else None)
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n == CLIENT_PACKAGE or n.startswith(CLIENT_PACKAGE + ".")]:
            del sys.modules[name]


def test_client_generates_without_warnings(generated: Generated) -> None:
    assert generated.returncode == 0, "openapi-python-client failed:\n" + "\n".join(generated.output)
    # Anything but its "Generating <path>" line is a warning or an error about the schema.
    messages = [line for line in generated.output if line.strip() and not line.startswith("Generating ")]
    _fail_listing("lines of openapi-python-client warnings on openapi/openapi.json", messages)


def test_generated_package_imports(generated: Generated) -> None:
    package = generated.module()
    broken: list[str] = []
    for module in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
        try:
            importlib.import_module(module.name)
        except Exception as error:  # list every broken module, not just the first
            broken.append(f"{module.name}: {type(error).__name__}: {error}")
    _fail_listing("generated modules that do not import", broken)


async def test_generated_client_manages_containers(
    generated: Generated, settings: Settings, uds_server: uvicorn.Server, namespace: str
) -> None:
    client_module = generated.module("client")
    models = generated.module("models")
    create_container = generated.module("api.containers.create_container")
    list_containers = generated.module("api.containers.list_containers")
    get_container = generated.module("api.containers.get_container")
    delete_container = generated.module("api.containers.delete_container")

    transport = httpx.AsyncHTTPTransport(uds=str(settings.state / "cargohold.sock"))
    client: Any = client_module.Client(
        base_url=BASE_URL, httpx_args={"transport": transport}, raise_on_unexpected_status=True
    )
    body = models.ContainerCreate.from_dict(container_body("web", labels={"env": "prod"}))
    async with client:
        created = await create_container.asyncio_detailed(client=client, body=body, cargohold_namespace=namespace)
        assert created.status_code == 201, created.content
        assert isinstance(created.parsed, models.Container), created.parsed
        assert created.parsed.id == "web"
        assert created.parsed.labels.to_dict() == {"env": "prod"}
        assert created.headers["location"] == "/containers/web"

        listed = await list_containers.asyncio_detailed(client=client, cargohold_namespace=namespace)
        assert listed.status_code == 200, listed.content
        assert isinstance(listed.parsed, models.ContainerList)
        assert [c.id for c in listed.parsed.containers] == ["web"]

        filtered = await list_containers.asyncio_detailed(
            client=client, cargohold_namespace=namespace, filter_=["labels.env==dev"]
        )
        assert filtered.status_code == 200, filtered.content
        assert filtered.parsed.containers == []

        got = await get_container.asyncio_detailed("web", client=client, cargohold_namespace=namespace)
        assert got.status_code == 200, got.content
        assert isinstance(got.parsed, models.Container)
        assert got.parsed.to_dict() == created.parsed.to_dict()

        deleted = await delete_container.asyncio_detailed("web", client=client, cargohold_namespace=namespace)
        assert deleted.status_code == 204, deleted.content

        listed = await list_containers.asyncio_detailed(client=client, cargohold_namespace=namespace)
        assert listed.status_code == 200, listed.content
        assert listed.parsed.containers == []

        missing = await get_container.asyncio_detailed("web", client=client, cargohold_namespace=namespace)
        assert missing.status_code == 404, missing.content
        assert isinstance(missing.parsed, models.Problem), missing.parsed
        assert missing.parsed.status == 404
