"""Boundaries (STYLE 2b): the content store knows digests and files only, nothing of images,
registries, HTTP or SQL; images reach neither the API nor SQL (httpx is theirs: the registry client;
the image service reaches its rows through `app.store.images` only)."""

from __future__ import annotations

from tests.imports import APP, imports_of

FORBIDDEN = ("app.images", "app.store", "app.api", "httpx", "fastapi", "starlette", "aiosqlite", "sqlite3")


def test_content_imports_nothing_above_it() -> None:
    for path in (APP / "content").rglob("*.py"):
        bad = {name for name in imports_of(path) if name.startswith(FORBIDDEN)}
        assert bad == set(), f"{path.name} imports {bad}"


def test_images_do_not_reach_the_api_or_sql() -> None:
    for path in (APP / "images").rglob("*.py"):
        allowed = {"app.images", "httpx"}
        if path.name == "service.py":
            allowed.add("app.store")  # the service keeps its rows through a store, as every service does
        bad = {name for name in imports_of(path) if name.startswith(tuple(set(FORBIDDEN) - allowed))}
        assert bad == set(), f"{path.name} imports {bad}"
