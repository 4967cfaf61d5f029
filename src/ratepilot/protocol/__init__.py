"""Pure knowledge of OpenAI's wire protocol: headers, error bodies, token estimates, prices.

Nothing here does I/O; the simulator and the client both build on it, so the two can never disagree about
what a header or an error means.
"""

from __future__ import annotations
