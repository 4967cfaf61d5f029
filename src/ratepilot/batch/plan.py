"""Planning: split requests by model (and endpoint), then into shards the Batch API accepts.

A shard is one batch input file: at most ``max_requests`` lines, ``max_bytes`` bytes, ``max_embedding_inputs``
embedding inputs, and — when the model's enqueued-token limit is known — at most that many estimated tokens,
so that a shard can ever be admitted on its own. :class:`ShardPacker` is the pure rolling decision;
:class:`ShardWriter` streams lines into shard files with one open file per (model, url), so memory does not
grow with the input. Planning a large file goes a block at a time (:meth:`ShardWriter.add_groups`): the
block's lines arrive as columns per (model, url), shard boundaries are found with prefix sums and bisection,
and each shard's part of a block is written as one slice — no Python work per line.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import accumulate
from pathlib import Path
from typing import IO, Any

from ..protocol.tokens import estimate_prompt_tokens
from .blocks import UploadGroup, batch_line_bytes, embedding_inputs, fast_token_estimate
from .config import BatchConfig

__all__ = [
    "Segment",
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


Segment = tuple[int, int, int]
"""``(start, end, shard)``: lines ``[start, end)`` of an :class:`~ratepilot.requests.UploadGroup` went into
``shard``."""


@dataclass(slots=True)
class _Prefix:
    """Prefix sums of a group's columns (``bytes[i]`` = bytes of its first ``i`` lines): what a run of lines
    adds to a shard is a difference of two entries."""

    bytes: list[int]
    tokens: list[int]
    inputs: list[int] | None

    @classmethod
    def of(cls, group: UploadGroup) -> _Prefix:
        return cls(
            list(accumulate(group.sizes, initial=0)),
            list(accumulate(group.tokens, initial=0)),
            None if group.inputs is None else list(accumulate(group.inputs, initial=0)),
        )


class ShardPacker:
    """Pure: does one more line fit in the current shard of a group, or must a new one start?

    :meth:`fits` decides for one line; :meth:`room` for a run of lines at once (the same rule: ``room`` is the
    number of consecutive lines for which ``fits`` would say yes).
    """

    def __init__(self, config: BatchConfig, token_cap: int | None) -> None:
        self.config = config
        self.token_cap = token_cap

    def room(self, spec: ShardSpec, prefix: _Prefix, start: int, n: int) -> int:
        """How many of lines ``[start, n)`` of a group fit into ``spec`` one after the other (at least one when
        ``spec`` is empty: an oversize single line is the server's to refuse)."""
        c = self.config
        end = min(n, start + c.max_requests - spec.n_requests)  # the last candidate end (exclusive)
        end = self._cap(prefix.bytes, start, end, c.max_bytes - spec.n_bytes)
        if prefix.inputs is not None:
            end = self._cap(prefix.inputs, start, end, c.max_embedding_inputs - spec.n_inputs)
        if self.token_cap is not None:
            end = self._cap(prefix.tokens, start, end, self.token_cap - spec.est_tokens)
        k = max(0, end - start)
        return max(k, 1) if spec.n_requests == 0 else k

    @staticmethod
    def _cap(sums: list[int], start: int, end: int, left: int) -> int:
        """The largest ``e <= end`` with ``sums[e] - sums[start] <= left`` (``start - 1`` if none)."""
        if end <= start:
            return end
        return bisect_right(sums, sums[start] + left, start, end + 1) - 1

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

    def add_groups(self, groups: Sequence[UploadGroup]) -> list[list[Segment]]:
        """Append a block's lines, given per (model, url) group; returns each group's segments.

        The same shards as :meth:`add_prepared` line by line (numbers included: shards are numbered in the
        order of the lines that open them), found with prefix sums and bisection per group.
        """
        prefixes = [_Prefix.of(g) for g in groups]
        # 1. Where each group's lines are cut into shards (pure: simulated on copies of the open shards).
        cuts: list[list[tuple[int, int, bool]]] = []
        for group, prefix in zip(groups, prefixes, strict=True):
            current = self._open.get((group.model, group.url))
            if current is not None:
                packer, spec, new = current.packer, replace(current.spec), False
            else:
                packer, spec, new = self._packer(group.model), ShardSpec(-1, group.model, group.url, Path()), True
            runs: list[tuple[int, int, bool]] = []
            start, n = 0, len(group.line_nos)
            while start < n:
                k = packer.room(spec, prefix, start, n)
                if k == 0:  # full: the next line opens a new shard (with the packer _start will give it)
                    packer, spec, new = self._packer(group.model), ShardSpec(-1, group.model, group.url, Path()), True
                    continue
                end = start + k
                runs.append((start, end, new))
                _grow(spec, prefix, start, end)
                start, new = end, False
            cuts.append(runs)
        # 2. New shards are numbered in the order of the lines that open them, across groups.
        opening = sorted(
            (groups[g].line_nos[start], g, r)
            for g, runs in enumerate(cuts)
            for r, (start, _, new) in enumerate(runs)
            if new
        )
        numbers = {(g, r): self._next + i for i, (_, g, r) in enumerate(opening)}
        self._next += len(opening)
        # 3. Write each run as one slice of the group's bytes.
        out: list[list[Segment]] = []
        for g, (group, prefix, runs) in enumerate(zip(groups, prefixes, cuts, strict=True)):
            key = (group.model, group.url)
            view = memoryview(group.data)
            segments: list[Segment] = []
            for r, (start, end, new) in enumerate(runs):
                if new:
                    old = self._open.get(key)
                    if old is not None:
                        self._finish(old)
                    self._open[key] = self._start(group.model, group.url, numbers[(g, r)])
                current = self._open[key]
                current.write(view[prefix.bytes[start] : prefix.bytes[end]])
                _grow(current.spec, prefix, start, end)
                segments.append((start, end, current.spec.shard))
            out.append(segments)
        return out

    def _packer(self, model: str) -> ShardPacker:
        return ShardPacker(self.config, self._token_cap(model))

    def _start(self, model: str, url: str, number: int | None = None) -> _OpenShard:
        if number is None:
            number = self._next
            self._next += 1
        spec = ShardSpec(number, model, url, self.directory / shard_file_name(number))
        self._by_number[spec.shard] = spec
        return _OpenShard(spec, self._packer(model))

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


def _grow(spec: ShardSpec, prefix: _Prefix, start: int, end: int) -> None:
    """Add lines ``[start, end)`` of a group to a shard's totals."""
    spec.n_requests += end - start
    spec.n_bytes += prefix.bytes[end] - prefix.bytes[start]
    spec.est_tokens += prefix.tokens[end] - prefix.tokens[start]
    if prefix.inputs is not None:
        spec.n_inputs += prefix.inputs[end] - prefix.inputs[start]
