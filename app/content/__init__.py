"""The content store: blobs by digest, written through verified ingests (see `store`)."""

from __future__ import annotations

from .digests import digest_of, validate_digest
from .store import ContentStore, Info, IngestStatus, Writer

__all__ = ["ContentStore", "Info", "IngestStatus", "Writer", "digest_of", "validate_digest"]
