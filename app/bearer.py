"""The bearer token as a client sends it: `Authorization: Bearer <token>`, or, from a
browser's WebSocket, which cannot set headers, Kubernetes' subprotocol
`base64url.bearer.authorization.k8s.io.<the token, base64url, unpadded>`.

Checked by the daemon's token middleware (app/api/middleware.py) and by `cargohold ui`'s
proxy (app/client/ui.py), so this module imports no web framework. Tokens are compared in
constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac

K8S_TOKEN_SUBPROTOCOL = "base64url.bearer.authorization.k8s.io."


def bearer_matches(authorization: str, token: bytes) -> bool:
    """Whether an `Authorization` header's value carries `token` (the scheme is
    case-insensitive, RFC 9110 11.1)."""
    scheme, _, credentials = authorization.partition(" ")
    # utf-8 with "replace": whatever a header decoded to encodes, and a token is ASCII.
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(errors="replace"), token)


def subprotocol_matches(subprotocol: str, token: bytes) -> bool:
    """Whether a WebSocket subprotocol is the Kubernetes token subprotocol carrying `token`."""
    if not subprotocol.startswith(K8S_TOKEN_SUBPROTOCOL):
        return False
    encoded = subprotocol.removeprefix(K8S_TOKEN_SUBPROTOCOL)
    try:
        sent = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(sent, token)
