"""The web view (DESIGN "The web view"): `/ui` serves the page's static files from the
package (app/ui/static), and `SameOriginMiddleware` refuses requests that a browser page of
another origin sends to the API.

The files need no token (the page asks for it, then sends it on every request itself), so
they are public paths of the token middleware (`PUBLIC_PATHS`). Only the files in the
package are served, looked up by name in a table built at start: no path from a request
ever reaches the file system. Each answer carries a strict Content-Security-Policy (the
page's own scripts, styles and connections only; no inline script, no inline style but an
empty one; no framing), `nosniff`,
and an ETag with `Cache-Control: no-cache`, so a browser revalidates and an upgraded
daemon's files are never mixed with cached old ones. Not in the OpenAPI description:
these are files, not API.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ErrorKind
from .problems import problem_response

# Paths the token middleware lets through: `/ui` and everything under `/ui/` (a trailing
# `*` marks a prefix there).
PUBLIC_PATHS = frozenset({"/ui", "/ui/*"})

# The one inline style allowed is the empty one (the hash of ""): xterm.js inserts <style>
# elements whose text app/ui/static/csp.js moves to constructed stylesheets, leaving them empty.
# connect-src 'self' covers ws: and wss: of the page's own host and port in CSP Level 3
# browsers (Chromium, Firefox); they are named anyway for older ones, from the request's
# Host when it is a plain host[:port] (never text that could end the directive).
_EMPTY_STYLE = "sha256-" + base64.b64encode(hashlib.sha256(b"").digest()).decode()
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' '{empty_style}'; img-src 'self' data:; font-src 'self'; "
    "connect-src {connect}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_PLAIN_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".css": "text/css", ".html": "text/html",
          ".md": "text/plain", ".svg": "image/svg+xml"}


@dataclass(frozen=True)
class _File:
    body: bytes
    media_type: str
    etag: str


def _load_files() -> dict[str, _File]:
    """Every file under app/ui/static, by its path relative to it (`app.js`, `vendor/xterm.mjs`)."""
    files: dict[str, _File] = {}

    def walk(directory: Traversable, prefix: str) -> None:
        for entry in directory.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif entry.is_file() and not entry.name.startswith("."):
                body = entry.read_bytes()
                suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
                media_type = _TYPES.get(suffix) or mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
                if media_type.startswith("text/"):
                    media_type += "; charset=utf-8"
                etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
                files[f"{prefix}{entry.name}"] = _File(body, media_type, etag)

    walk(resources.files("app").joinpath("ui", "static"), "")
    return files


_FILES = _load_files()

router = APIRouter(tags=["ui"], include_in_schema=False)


def security_headers(request: Request) -> dict[str, str]:
    """The headers every answer under /ui carries."""
    host = request.headers.get("host", "")
    connect = f"'self' ws://{host} wss://{host}" if _PLAIN_HOST.match(host) else "'self'"
    return {
        "Content-Security-Policy": _CSP.format(connect=connect, empty_style=_EMPTY_STYLE),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }


@router.api_route("/ui", methods=["GET", "HEAD"])
async def get_ui_root(request: Request) -> Response:
    # Relative URLs in the page resolve under /ui/; the fragment (a token from `cargohold ui`)
    # survives the redirect, as browsers keep it.
    return RedirectResponse("/ui/", status_code=308, headers=security_headers(request))


@router.api_route("/ui/{path:path}", methods=["GET", "HEAD"])
async def get_ui_file(path: str, request: Request) -> Response:
    found = _FILES.get(path or "index.html")
    headers = security_headers(request)
    if found is None:
        return problem_response(404, f"no file {path!r} in the web view", ErrorKind.NOT_FOUND.value, headers=headers)
    headers |= {"ETag": found.etag, "Cache-Control": "no-cache"}
    if found.etag in (tag.strip() for tag in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else found.body
    response = Response(body, media_type=found.media_type, headers=headers)
    if request.method == "HEAD":
        response.headers["Content-Length"] = str(len(found.body))
    return response


class SameOriginMiddleware:
    """Refuse (403 problem+json) an HTTP request that a browser page of another origin sent:
    one whose `Origin` is not this daemon's own scheme and host. Browsers send Origin on
    every cross-origin request (and on same-origin ones but GET and HEAD); clients that are
    not browsers send none, and are let through. The attach WebSocket checks the same
    (api/attach.py); without it a page elsewhere could not read an answer anyway (no CORS
    headers here) nor hold the token, but it could still make the daemon act on a request
    whose answer it never reads."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # One pass over the raw headers (ASGI names are lower-case): on the path of every request.
            origin = host = None
            for name, value in scope["headers"]:
                if name == b"origin":
                    origin = value.decode("latin-1")
                elif name == b"host":
                    host = value.decode("latin-1")
            if origin is not None and not _same_origin(origin, scope.get("scheme", "http"), host or ""):
                detail = (f"a request from origin {origin!r} is refused: only pages served by this daemon "
                          f"({host}) may call it")
                await problem_response(403, detail, ErrorKind.PERMISSION_DENIED.value)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _same_origin(origin: str, scheme: str, host: str) -> bool:
    parts = urlsplit(origin)
    return parts.scheme == scheme and bool(host) and parts.netloc.lower() == host.lower()
