"""The drop-in client layer: ``Pilot`` and ``pilot.wrap(client)``.

``client = Pilot().wrap(OpenAI())`` is a real SDK client whose every HTTP call goes through ratepilot's
transport (:mod:`.transport`): planned (:mod:`.plan`), admitted by the limiter, sent, observed, settled,
classified and retried (:mod:`.exchange`, :mod:`ratepilot.retry`), and accounted (:mod:`.ledger`,
:mod:`.budget`).

Ownership: ``wrap`` never modifies the client it is given. For the SDK's default HTTP client it builds the
same default client around a fresh connection pool; for an HTTP client the user built, it makes a shallow
copy whose transports are wrapped (proxies, mounts and settings kept), so closing the wrapped SDK client also
closes the transports it shares with the user's client.
"""

from __future__ import annotations

from .budget import ALERT_THRESHOLDS, Budget, BudgetAlert
from .ledger import ModelUsage, UsageLedger, UsageReport
from .pilot import LimitState, Pilot
from .plan import PRIORITY_HEADER, REQUESTS_SCOPE, Usage
from .transport import AsyncPilotTransport, PilotTransport

__all__ = [
    "ALERT_THRESHOLDS",
    "PRIORITY_HEADER",
    "REQUESTS_SCOPE",
    "AsyncPilotTransport",
    "Budget",
    "BudgetAlert",
    "LimitState",
    "ModelUsage",
    "Pilot",
    "PilotTransport",
    "Usage",
    "UsageLedger",
    "UsageReport",
]
