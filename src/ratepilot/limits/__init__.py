"""Rate limiting: sans-IO GCRA buckets, the limiter that learns from server headers, and its stores."""

from __future__ import annotations

from .gcra import Bucket, Decision, Rate, admit_all

__all__ = ["Bucket", "Decision", "Rate", "admit_all"]
