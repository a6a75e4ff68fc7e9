"""The `cargohold` entry point: `serve` and `openapi` go to the daemon's command (app/cli.py),
every other command to the client's. Imported alone so that a client command never
loads the daemon (FastAPI, uvicorn, the runtime): that halves a client command's start."""

from __future__ import annotations

import sys
from collections.abc import Sequence

DAEMON_COMMANDS = ("serve", "openapi")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in DAEMON_COMMANDS:
        from ..cli import main as daemon_main

        return daemon_main(arguments)
    from .commands import run_app

    return run_app(arguments)
