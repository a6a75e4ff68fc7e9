"""Stored events: the durable log behind SSE replay and /events/history."""

from __future__ import annotations

import json
from datetime import datetime

from ..models import Event
from .db import Database, Row


def _event(row: Row) -> Event:
    return Event(
        id=row["id"],
        timestamp=datetime.fromisoformat(row["timestamp"]),
        namespace=row["namespace"],
        topic=row["topic"],
        event=json.loads(row["payload"]),
    )


class EventStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def after(self, since: int, limit: int) -> list[Event]:
        """Up to `limit` events with id > `since`, oldest first."""
        rows = await self._db.all(
            "SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", since, limit
        )
        return [_event(row) for row in rows]

    async def last_id(self) -> int:
        row = await self._db.one("SELECT max(id) AS id FROM events")
        return int(row["id"]) if row is not None and row["id"] is not None else 0
