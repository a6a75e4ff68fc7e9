"""What the events table keeps: bounded payloads, and the newest events while they stay
under a count AND a number of payload bytes.

Events carry whole label maps (256 labels of 4 KiB make a 1 MiB payload), so a count
alone let the table grow to tens of GB. Each payload is cut to `max_payload_bytes`
(labels dropped first, `truncated` naming what was cut, so a subscriber knows to GET
the object), and the bytes stored are counted: in memory, from a sum taken when the
database opens, moved by each committed transaction. `Tx.append_event` calls `cut` and
`prune` inside its transaction; `Database` applies the byte count after COMMIT.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

# Members an event names its object by: never dropped from a payload.
_IDENTITY = frozenset({"id", "name", "container_id", "exec_id", "key", "snapshotter", "pid"})
# Count-based pruning runs every this many events; byte-based whenever over the bound,
# down to this share of it (so it does not run again on the next insert).
PRUNE_EVERY = 1000
_PRUNE_TO = 0.9
# Rows deleted per step, and steps per append at most: a table far over the bound (a
# lowered --event-retention-size) is brought down over many writes, none stalling long.
_STEP_ROWS = 500
_MAX_STEPS = 20


def _dumps(value: Any) -> str:
    # As `db.dumps` writes (compact, keys sorted): the stored payload's exact text.
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _size(text: str) -> int:
    return len(text.encode())


@dataclass
class EventRetention:
    max_events: int = 100_000
    max_bytes: int = 256 * 1024 * 1024
    max_payload_bytes: int = 64 * 1024
    # Payload bytes of the events committed in the table (set by `load`).
    stored_bytes: int = 0

    def load(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT coalesce(sum(length(CAST(payload AS BLOB))), 0) FROM events").fetchone()
        self.stored_bytes = int(row[0])

    def cut(self, payload: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """`payload` within `max_payload_bytes`, and its stored text. Past the bound, the
        largest members other than labels and those naming the object are nulled until
        the rest fits without labels; then labels are kept, in key order, while they fit.
        `truncated` lists the members cut."""
        text = _dumps(payload)
        if _size(text) <= self.max_payload_bytes:
            return payload, text
        labels = payload.get("labels")
        has_labels = isinstance(labels, dict)
        truncated: list[str] = ["labels"] if has_labels else []
        cut = {**payload, "truncated": truncated}
        if has_labels:
            cut["labels"] = {}
        others = sorted(
            (key for key in payload if key not in _IDENTITY and key != "labels"),
            key=lambda key: _size(_dumps(payload[key])), reverse=True,
        )
        for key in others:
            if _size(_dumps(cut)) <= self.max_payload_bytes:
                break
            cut[key] = None
            truncated.append(key)
        if isinstance(labels, dict):
            room = self.max_payload_bytes - _size(_dumps(cut))
            kept: dict[str, Any] = {}
            for key in sorted(labels):
                entry = _size(_dumps({key: labels[key]})) - 1  # `"k":"v",` in the map
                if entry > room:
                    break
                kept[key] = labels[key]
                room -= entry
            cut["labels"] = kept
            if len(kept) == len(labels):
                truncated.remove("labels")
        return cut, _dumps(cut)

    def prune(self, conn: sqlite3.Connection, event_id: int, pending_bytes: int) -> int:
        """Inside the transaction that appended event `event_id`, with `pending_bytes` the
        bytes it changed so far: delete the oldest events past either bound. Returns the
        (negative) bytes deleted. The newest event always stays."""
        removed = 0
        if event_id % PRUNE_EVERY == 0:
            removed += self._delete(conn, "id <= ?", event_id - self.max_events)
        if self.stored_bytes + pending_bytes + removed > self.max_bytes:
            target = int(self.max_bytes * _PRUNE_TO)
            for _ in range(_MAX_STEPS):
                if self.stored_bytes + pending_bytes + removed <= target:
                    break
                step = self._delete(
                    conn, f"id IN (SELECT id FROM events WHERE id < ? ORDER BY id LIMIT {_STEP_ROWS})", event_id
                )
                if step == 0:
                    break
                removed += step
        return removed

    @staticmethod
    def _delete(conn: sqlite3.Connection, where: str, bound: int) -> int:
        rows = conn.execute(
            f"DELETE FROM events WHERE {where} RETURNING length(CAST(payload AS BLOB))", (bound,)
        ).fetchall()
        return -sum(int(row[0]) for row in rows)
