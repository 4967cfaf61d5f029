"""Standard Webhooks signatures, as OpenAI sends them: pure signing and verification.

A delivery carries ``webhook-id``, ``webhook-timestamp`` (unix seconds) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, several space-separated during a secret
rotation). The secret is ``whsec_`` + base64 of the key bytes. Both the simulator's sender and ratepilot's
receiver use this module, so they cannot disagree; the tests check it against the official SDK's
``client.webhooks.verify_signature``.

Why not call the SDK's verifier directly: it reads ``time.time()`` itself, and ratepilot injects time
everywhere (a simulator on a fake or scaled clock signs with *its* time). Here ``now`` is an argument.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping

from ..errors import RatePilotError

__all__ = [
    "DEFAULT_TOLERANCE",
    "WebhookVerificationError",
    "decode_secret",
    "new_secret",
    "sign",
    "signature_headers",
    "verify_signature",
]

DEFAULT_TOLERANCE = 300.0  # seconds either side of now, as OpenAI and the Standard Webhooks spec use
_PREFIX = "whsec_"


class WebhookVerificationError(RatePilotError, ValueError):
    """A delivery that must not be acted on; ``reason`` says why in words safe to log (no secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_secret(secret: str) -> bytes:
    """Key bytes of a webhook secret: base64 after ``whsec_``; without the prefix, the text itself (as the SDK).

    Raises ``ValueError`` (never echoing the secret) if the part after ``whsec_`` is not valid base64.
    """
    if not secret:
        raise ValueError("webhook secret is empty")
    if secret.startswith(_PREFIX):
        try:
            key = base64.b64decode(secret[len(_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("webhook secret is not valid base64 after 'whsec_'") from None
        if not key:
            raise ValueError("webhook secret is empty after 'whsec_'")
        return key
    return secret.encode()


def new_secret(nbytes: int = 24) -> str:
    """A fresh random ``whsec_...`` secret (for the simulator and tests)."""
    return _PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode()


def sign(secret: str | bytes, webhook_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``v1,<base64>`` signature of one delivery (``secret`` as text or as decoded key bytes)."""
    key = secret if isinstance(secret, bytes) else decode_secret(secret)
    payload = body.encode() if isinstance(body, str) else body
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + payload, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signature_headers(secret: str | bytes, webhook_id: str, timestamp: int, body: bytes | str) -> dict[str, str]:
    """The three headers a sender attaches to a delivery."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
    }


def verify_signature(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[str, int]:
    """Check one delivery; return ``(webhook_id, timestamp)`` or raise :class:`WebhookVerificationError`.

    ``headers`` must be looked up case-insensitively by the caller's mapping (Starlette's and httpx's are);
    ``now`` is unix seconds from the injected clock. The timestamp is checked before the MAC so a stale
    replay costs no HMAC work; the MAC is compared in constant time against every ``v1`` signature given.
    """
    webhook_id = headers.get("webhook-id")
    ts_text = headers.get("webhook-timestamp")
    sig_header = headers.get("webhook-signature")
    if not webhook_id or not ts_text or not sig_header:
        missing = [
            n
            for n, v in (("webhook-id", webhook_id), ("webhook-timestamp", ts_text), ("webhook-signature", sig_header))
            if not v
        ]
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    # Unix seconds have 10 digits until 2286: a longer one is absurd (and a huge int overflows a float below).
    if len(ts_text) > 12:
        raise WebhookVerificationError("webhook-timestamp is not a plausible unix time")
    try:
        timestamp = int(ts_text)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    if now - timestamp > tolerance:
        raise WebhookVerificationError(f"webhook-timestamp is too old ({now - timestamp:.0f}s > {tolerance:.0f}s)")
    if timestamp - now > tolerance:
        raise WebhookVerificationError(f"webhook-timestamp is in the future ({timestamp - now:.0f}s ahead)")
    expected = sign(secret, webhook_id, timestamp, body)[len("v1,") :].encode()
    for part in sig_header.split():
        version, _, value = part.partition(",")
        if version == "v1" and hmac.compare_digest(expected, value.encode()):
            return webhook_id, timestamp
    raise WebhookVerificationError("no matching v1 signature")
