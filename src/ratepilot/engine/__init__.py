"""The online engine: many requests in flight at the limiter's pace, each answer written as it comes.

Used by both job runners — ``ratepilot run`` (:mod:`ratepilot.run`) and the Batch pipeline's online fallback
(:mod:`ratepilot.batch.online`) — so it sits below both: neither runner imports the other. :mod:`.online` is
the runner (:class:`OnlineRunner`), :mod:`.sender` how one request is sent (the only place that touches HTTP),
:mod:`.window` how many may be in flight (it follows the learned limits).
"""

from __future__ import annotations

from .online import OnlineRunner, OnlineStats
from .sender import Answer, HttpSender, SdkSender, Sender
from .window import InFlightWindow

__all__ = ["Answer", "HttpSender", "InFlightWindow", "OnlineRunner", "OnlineStats", "SdkSender", "Sender"]
