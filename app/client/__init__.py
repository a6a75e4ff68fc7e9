"""The `cargohold` client: a typed layer over the HTTP API (`api`), WebSocket attach with a
raw terminal (`attach`), and the docker-style commands built on them (`commands`). It
speaks to the daemon only through the API, never by importing the daemon's code, bar
the pydantic models of app/models.py that describe the API's bodies."""

from __future__ import annotations
