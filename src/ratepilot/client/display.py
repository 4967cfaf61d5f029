"""How the client's figures are rounded for people and for JSON: one rule per kind of number.

The objects keep full precision (a limiter's ``remaining`` is fractional while a bucket refills, costs add up
per token); what is *shown* — reprs, ``str()``, ``to_dict()`` — is rounded to what the number means:

* money: 6 decimals (a millionth of a dollar: one token of the cheapest models is less, a request is more);
* seconds: 3 decimals (milliseconds);
* units (requests, tokens): whole numbers. ``remaining`` rounds down — what can be used now — except for
  the noise of float arithmetic (26.9999999 is 27).
"""

from __future__ import annotations

import math

__all__ = ["seconds", "units", "units_left", "usd"]

_NOISE = 1e-6


def usd(value: float) -> float:
    return round(value, 6)


def seconds(value: float) -> float:
    return round(value, 3)


def units(value: float) -> int | float:
    """A limit or a count: whole unless it really is fractional (a limit scaled by a safety margin)."""
    nearest = round(value)
    return int(nearest) if abs(value - nearest) < _NOISE else round(value, 2)


def units_left(value: float) -> int:
    """What is left of a bucket, in whole units available now."""
    return max(0, math.floor(value + _NOISE))
