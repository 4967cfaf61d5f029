"""Planning: split requests by model (and endpoint), then into shards the Batch API accepts.

A shard is one batch input file: at most ``max_requests`` lines, ``max_bytes`` bytes, ``max_embedding_inputs``
embedding inputs, and — when the model's enqueued-token limit is known — at most that many estimated tokens,
so that a shard can ever be admitted on its own. :class:`ShardPacker` is the pure rolling decision;
:class:`ShardWriter` streams lines into shard files with one open file per (model, url), so memory does not
grow with the input.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..protocol.tokens import estimate_prompt_tokens
from ..requests import batch_line_bytes, embedding_inputs, fast_token_estimate
from .config import BatchConfig

__all__ = [
    "ShardPacker",
    "ShardSpec",
    "ShardWriter",
    "TokenEstimator",
    "batch_line_bytes",
    "embedding_inputs",
    "exact_token_estimate",
    "fast_token_estimate",
    "shard_file_name",
]

TokenEstimator = Callable[[str, Mapping[str, Any]], int]
"""``(url, body) -> tokens`` counted against the model's enqueued-token limit."""


def exact_token_estimate(url: str, body: Mapping[str, Any]) -> int:
    """Prompt tokens by the real tokenizer (what the server counts as enqueued); ~60 µs per chat request."""
    return estimate_prompt_tokens(url, body)


def shard_file_name(shard: int) -> str:
    return f"shard-{shard:05d}.jsonl"


@dataclass(slots=True)
class ShardSpec:
    """A finished shard file and its totals."""

    shard: int
    model: str
    url: str
    path: Path
    n_requests: int = 0
    n_bytes: int = 0
    est_tokens: int = 0
    n_inputs: int = 0


class ShardPacker:
    """Pure: does one more line fit in the current shard of a group, or must a new one start?"""

    def __init__(self, config: BatchConfig, token_cap: int | None) -> None:
        self.config = config
        self.token_cap = token_cap

    def fits(self, spec: ShardSpec, n_bytes: int, n_inputs: int, tokens: int) -> bool:
        if spec.n_requests == 0:
            return True  # a line always fits an empty shard (an oversize single line is the server's to refuse)
        c = self.config
        return (
            spec.n_requests + 1 <= c.max_requests
            and spec.n_bytes + n_bytes <= c.max_bytes
            and spec.n_inputs + n_inputs <= c.max_embedding_inputs
            and (self.token_cap is None or spec.est_tokens + tokens <= self.token_cap)
        )


class _OpenShard:
    __slots__ = ("fh", "packer", "spec", "write")

    def __init__(self, spec: ShardSpec, packer: ShardPacker) -> None:
        self.spec = spec
        self.packer = packer
        self.fh: IO[bytes] = open(spec.path, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in ShardWriter
        self.write = self.fh.write  # bound once: called per line


class ShardWriter:
    """Streams request lines into shard files under ``directory``; one open shard per (model, url).

    ``token_cap(model)`` returns the model's enqueued-token limit if known (shards are kept under it).
    ``estimate``: the enqueued-token estimator (``None``: :func:`fast_token_estimate` of the line's bytes).
    Shard numbers are assigned in the order shards are opened, starting at ``first_shard``.
    """

    def __init__(
        self,
        directory: Path,
        config: BatchConfig,
        *,
        first_shard: int = 0,
        token_cap: Callable[[str], int | None] = lambda _model: None,
        estimate: TokenEstimator | None = None,
    ) -> None:
        self.directory = directory
        self.config = config
        self._next = first_shard
        self._token_cap = token_cap
        self._estimate = estimate
        self._open: dict[tuple[str, str], _OpenShard] = {}
        self.finished: list[ShardSpec] = []
        self._by_number: dict[int, ShardSpec] = {}
        directory.mkdir(parents=True, exist_ok=True)

    def add(self, custom_id: str, url: str, body: Mapping[str, Any], data: bytes | None = None) -> ShardSpec:
        """Append one request; returns the shard it went into. ``data``: the pre-serialized line, if any."""
        model = body.get("model")
        if data is None:
            data = batch_line_bytes(custom_id, url, body)
        n_inputs = embedding_inputs(url, body)
        tokens = fast_token_estimate(data) if self._estimate is None else self._estimate(url, body)
        shard = self.add_prepared(model if isinstance(model, str) else "", url, data, n_inputs, tokens)
        return self._by_number[shard]

    def add_prepared(self, model: str, url: str, data: bytes, n_inputs: int, tokens: int) -> int:
        """Append one already serialized line with its totals; returns its shard number (the hot path)."""
        key = (model, url)
        current = self._open.get(key)
        n_bytes = len(data)
        if current is None or not current.packer.fits(current.spec, n_bytes, n_inputs, tokens):
            if current is not None:
                self._finish(current)
            current = self._start(model, url)
            self._open[key] = current
        current.write(data)
        spec = current.spec
        spec.n_requests += 1
        spec.n_bytes += n_bytes
        if n_inputs:  # embeddings only
            spec.n_inputs += n_inputs
        spec.est_tokens += tokens
        return spec.shard

    def _start(self, model: str, url: str) -> _OpenShard:
        spec = ShardSpec(self._next, model, url, self.directory / shard_file_name(self._next))
        self._by_number[spec.shard] = spec
        self._next += 1
        return _OpenShard(spec, ShardPacker(self.config, self._token_cap(model)))

    def _finish(self, shard: _OpenShard) -> None:
        shard.fh.flush()
        os.fsync(shard.fh.fileno())
        shard.fh.close()
        self.finished.append(shard.spec)

    def close(self) -> list[ShardSpec]:
        """Finish every open shard; all shards written, by shard number."""
        for shard in self._open.values():
            self._finish(shard)
        self._open.clear()
        return sorted(self.finished, key=lambda s: s.shard)

    def abort(self) -> None:
        """Close and delete everything written (validation failed)."""
        for shard in self._open.values():
            shard.fh.close()
            self.finished.append(shard.spec)
        self._open.clear()
        for spec in self.finished:
            spec.path.unlink(missing_ok=True)
        self.finished.clear()
