"""Cargohold: a container daemon with an HTTP/JSON API (containerd's container/task split)."""

from __future__ import annotations

__version__ = "0.1.0"
