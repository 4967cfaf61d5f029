"""Object ids shaped like the real ones (``file-…``, ``batch_…``, ``resp_…``, ``asst_…``, ``evt_…``)."""

from __future__ import annotations

import secrets
import string

__all__ = ["new_id"]

_ALPHABET = string.ascii_letters + string.digits
_SEPARATOR = {"file": "-"}


def new_id(prefix: str, length: int = 24) -> str:
    """A random id with the real prefix; files use ``file-``, everything else ``<prefix>_``."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(length))
    return f"{prefix}{_SEPARATOR.get(prefix, '_')}{body}"
