"""Garbage collection of content and snapshots, and the leases that protect work in progress."""

from .leases import Lease, Leases

__all__ = ["Lease", "Leases"]
