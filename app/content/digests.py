"""Digests as the OCI image spec writes them: `algorithm:hex`.

Only the algorithms the OCI spec registers are accepted, sha256 and sha512, with lowercase
hex of exactly the right length (as opencontainers/go-digest's `Validate`). Anything else
is INVALID_ARGUMENT naming what is wrong. This module knows nothing of files or images.
"""

from __future__ import annotations

import hashlib
import re

from ..errors import invalid

SHA256 = "sha256"
SHA512 = "sha512"
# Hex length of each accepted algorithm.
HEX_LENGTHS = {SHA256: 64, SHA512: 128}
_HEX = re.compile(r"^[a-f0-9]+$")


def validate_digest(digest: object) -> str:
    """Return `digest` unchanged if it is a valid sha256/sha512 digest; else INVALID_ARGUMENT."""
    if not isinstance(digest, str):
        raise invalid(f"digest must be a string like sha256:<64 hex digits>, not {type(digest).__name__}")
    algorithm, sep, encoded = digest.partition(":")
    shown = digest if len(digest) <= 150 else digest[:150] + "..."
    if not sep:
        raise invalid(f'digest "{shown}" has no algorithm: expected sha256:<64 hex digits>')
    expected = HEX_LENGTHS.get(algorithm)
    if expected is None:
        raise invalid(f'digest "{shown}": unsupported algorithm "{algorithm[:20]}" (use sha256 or sha512)')
    if len(encoded) != expected or not _HEX.match(encoded):
        raise invalid(f'digest "{shown}": {algorithm} needs exactly {expected} lowercase hex digits')
    return digest


def split_digest(digest: str) -> tuple[str, str]:
    """(algorithm, hex) of a digest, validated."""
    algorithm, _, encoded = validate_digest(digest).partition(":")
    return algorithm, encoded


def hasher(digest: str) -> hashlib._Hash:
    """A fresh hash object of the digest's algorithm."""
    return hashlib.new(split_digest(digest)[0])


def digest_of(data: bytes, algorithm: str = SHA256) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
