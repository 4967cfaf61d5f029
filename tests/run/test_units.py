"""Pure pieces: the --mode auto rule, the in-flight window, the response cache."""

from __future__ import annotations

from pathlib import Path

from ratepilot.cache import CacheEntry, ResponseCache, cache_key
from ratepilot.protocol.headers import DimensionState, RateLimitHeaders
from ratepilot.run import InFlightWindow, choose_mode


def test_auto_mode_rule() -> None:
    big = choose_mode("auto", pending_requests=5_000, estimated_cost_usd=0.5)
    assert big.mode == "batch" and "5,000" in big.reason
    small = choose_mode("auto", pending_requests=100, estimated_cost_usd=0.1)
    assert small.mode == "online" and "small job" in small.reason
    pricey = choose_mode("auto", pending_requests=100, estimated_cost_usd=10.0)
    assert pricey.mode == "batch" and "saving $5.00" in pricey.reason
    urgent = choose_mode("auto", pending_requests=50_000, estimated_cost_usd=100.0, deadline_s=3600)
    assert urgent.mode == "online" and "deadline" in urgent.reason
    relaxed = choose_mode("auto", pending_requests=50_000, estimated_cost_usd=100.0, deadline_s=48 * 3600)
    assert relaxed.mode == "batch"
    assert choose_mode("online", pending_requests=10**6, estimated_cost_usd=1e3).mode == "online"
    assert choose_mode("batch", pending_requests=1, estimated_cost_usd=0).mode == "batch"


def _headers(req_limit: int, req_left: int, tok_limit: int, tok_left: int) -> RateLimitHeaders:
    return RateLimitHeaders(DimensionState(req_limit, req_left, 1.0), DimensionState(tok_limit, tok_left, 1.0))


def test_window_follows_learned_limits_and_latency() -> None:
    w = InFlightWindow(floor=8, ceiling=5000)
    assert w.size == 8  # nothing known: the limiter probes with one request anyway
    # A fresh bucket: the whole first minute's capacity can go at once.
    assert w.observe(_headers(600, 599, 10**7, 10**7), 0.1, 100) >= 599
    # Bucket drained: rate x latency (10 req/s x 0.5 s, doubled) plus what is left.
    w2 = InFlightWindow(floor=1, ceiling=5000)
    for _ in range(10):
        size = w2.observe(_headers(600, 0, 10**7, 10**7), 0.5, 100)
    assert size == 10
    # Token-bound: 60,000 TPM at 1,000 tokens per request = 1 req/s.
    w3 = InFlightWindow(floor=1, ceiling=5000)
    for _ in range(10):
        size = w3.observe(_headers(10_000, 10_000, 60_000, 0), 2.0, 1000)
    assert size == 4
    assert InFlightWindow(floor=8, ceiling=16).observe(_headers(10**6, 10**6, 10**9, 10**9), 1, 1) == 16


def test_cache_keys_ignore_key_order_and_separate_servers(tmp_path: Path) -> None:
    a = cache_key("http://a/v1/chat/completions", {"model": "m", "messages": [1]})
    assert a == cache_key("http://a/v1/chat/completions", {"messages": [1], "model": "m"})
    assert a != cache_key("http://b/v1/chat/completions", {"model": "m", "messages": [1]})
    with ResponseCache(tmp_path / "c.sqlite3") as cache:
        assert cache.get(a) is None
        cache.put_many([CacheEntry(a, "e", "m", "req_1", b'{"x": 1}', 0.25)])
        hit = cache.get(a)
        assert hit is not None and hit.body == b'{"x": 1}' and hit.cost_usd == 0.25 and len(cache) == 1
