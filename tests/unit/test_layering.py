"""Dependencies point one way: api -> services -> store/runtime. Checked by reading imports."""

from __future__ import annotations

from tests.imports import APP, imports_of

SERVICES = {"containers", "namespaces", "events", "daemon", "snapshots", "runtime", "monitor", "policy", "images"}


def modules() -> dict[str, set[str]]:
    return {str(p.relative_to(APP)): imports_of(p) for p in APP.rglob("*.py")}


def offenders(allowed: set[str], prefix: str) -> list[str]:
    return [
        module for module, names in modules().items()
        if module not in allowed and not module.startswith(tuple(a for a in allowed if a.endswith("/")))
        and any(n == prefix or n.startswith(prefix + ".") for n in names)
    ]


def test_only_api_and_main_import_fastapi() -> None:
    assert offenders({"api/", "main.py"}, "fastapi") == []
    assert offenders({"api/", "main.py", "cli.py"}, "starlette") == []


def test_only_the_store_speaks_sql() -> None:
    assert offenders({"store/"}, "aiosqlite") == []
    assert offenders({"store/"}, "sqlite3") == []


def top_level(name: str) -> str | None:
    """`app.containers.x` -> `containers`; None for anything outside the package."""
    parts = name.split(".")
    return parts[1] if parts[0] == "app" and len(parts) > 1 else None


def test_store_never_imports_services_or_api() -> None:
    for module, names in modules().items():
        if module.startswith("store/"):
            upward = {n for n in names if top_level(n) in SERVICES | {"api"}}
            assert upward == set(), f"{module} imports {upward}"


def test_services_never_import_api() -> None:
    for module, names in modules().items():
        if not module.startswith("api/") and module not in {"main.py", "cli.py"}:
            assert not any(n.startswith("app.api") for n in names), f"{module} imports app.api"


def test_the_container_service_never_calls_the_task_service() -> None:
    """TaskService reads containers; a call back would make a loop (logs have one owner,
    `runtime.logs.TaskLogs`, which both use)."""
    assert not any(n.startswith("app.runtime.tasks") for n in imports_of(APP / "containers.py"))


def test_one_way_to_each_resource() -> None:
    """File I/O runs in threads through `asyncio.to_thread` (aiofiles is not a second way),
    and one parser reads /proc/self/mountinfo (app/mountinfo.py, escapes decoded)."""
    assert offenders(set(), "aiofiles") == []
    readers = sorted(str(p.relative_to(APP)) for p in APP.rglob("*.py") if "/proc/self/mountinfo" in p.read_text())
    assert readers == ["mountinfo.py"]
