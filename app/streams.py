"""Per-client budgets of long-lived streams: event subscriptions, log follows and attach
sessions.

A stream holds a connection, a subscription queue or a file reader for as long as the
client likes, so each client may hold at most `max_per_client` at once; one more is
refused with RESOURCE_EXHAUSTED (429) before anything starts. Clients are keyed by the
caller (`client_key` in the API: the address for TCP, the uid for a unix-socket caller).
This module knows nothing of HTTP.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from .errors import CargoholdError, ErrorKind


class ClientStreams:
    def __init__(self, max_per_client: int) -> None:
        self._max = max_per_client
        self._open: Counter[str] = Counter()

    def acquire(self, client: str, what: str) -> Callable[[], None]:
        """Count one more stream of `client`; return the function that releases it (call
        it exactly once). Raises RESOURCE_EXHAUSTED when `client` holds the maximum."""
        if self._open[client] >= self._max:
            raise CargoholdError(
                ErrorKind.RESOURCE_EXHAUSTED,
                f"this client ({client}) already holds {self._max} open streams (event streams, "
                f"log follows, attach sessions), the daemon's --max-streams-per-client; "
                f"close one before opening {what}",
            )
        self._open[client] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._open[client] -= 1
                if not self._open[client]:
                    del self._open[client]

        return release

    def held(self, client: str) -> int:
        return self._open[client]
