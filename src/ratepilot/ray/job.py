"""The driver side: build the Dataset of requests, map it through the actors, write the results, resumably.

:func:`run_dataset` is ``ratepilot run`` for a Ray cluster: the same requests JSONL in, the same Batch-API-shaped
results JSONL out (group-committed with fsync, resumable: a rerun skips every ``custom_id`` that already has a
result, and a ``ratepilot run`` of the same file resumes what a Ray run began, and back), the same stops and
exit codes. The results are written by the driver, as the actors' output streams back; the requests are sent by
the actors, through one limiter shared in Redis.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import ray.data

from ..errors import StoreUnavailable
from ..exitcodes import STOP_EXIT_CODES, ExitCode
from ..figures import by_code
from ..joblock import job_lock, lock_path
from ..protocol.pricing import PriceTable
from ..protocol.usage import usage_from_body
from ..requests import InvalidLine, read_requests
from ..results import (
    error_result,
    finished_ids,
    job_id_for_file,
    open_results,
    response_result,
    result_error_code,
    spent_on,
)
from .settings import PilotSettings, RunControl
from .udf import FINAL_ERRORS, RESULT_COLUMNS, PilotUDF

__all__ = ["RunReport", "from_jsonl", "map_requests", "result_line", "run_dataset"]

log = logging.getLogger("ratepilot.ray")

ROWS_PER_BLOCK = 16  # from_jsonl: small blocks, so the rows spread over every actor from the first second
MAX_BLOCKS = 512

# Error codes of rows never sent (left for the rerun, as rows not started); any other non-final code is a request
# that got no usable answer (counted as unfinished).
_NOT_SENT = frozenset({"stopped", "budget_exceeded", "store_unavailable"})
_STOP_ADVICE = {
    "quota": "Add credit or raise the spend limit, then rerun: it resumes where it stopped.",
    "budget": "Raise budget_usd and rerun: it resumes where it stopped.",
    "auth": "Check the API key (PilotSettings.api_key or OPENAI_API_KEY on every node), then rerun.",
    "store": "Check the Redis store (PilotSettings.store), then rerun: it resumes where it stopped.",
}


def from_jsonl(
    path: str | os.PathLike[str],
    *,
    skip: Collection[str] = (),
    blocks: int | None = None,
    min_blocks: int = 1,
    skip_invalid: bool = False,
) -> ray.data.Dataset:
    """A requests JSONL (Batch-API lines or bare bodies, as ``ratepilot run`` reads them) as a Dataset with the
    columns ``custom_id``, ``method``, ``url`` and ``body`` (JSON text).

    The file is read and validated here, on the driver, so bare bodies get their ``line-N`` ids and an invalid
    line raises :class:`~ratepilot.requests.RequestsFileError` (naming the line and field) before anything is sent
    (``skip_invalid=True`` leaves such lines out instead). ``skip``: custom_ids to leave out (those that already
    have a result). ``blocks``: how many blocks to cut the rows into (default: one per 16 rows, at least
    ``min_blocks`` — give the actor count, so that every actor gets work — and at most 512).

    The rows are held by the driver until Ray takes them (about the file's size in memory): for inputs larger than
    that, build the Dataset with Ray's own readers (JSON text in ``body``) and give it to :func:`run_dataset`.
    """
    invalid: list[InvalidLine] | None = [] if skip_invalid else None
    items = [
        {"custom_id": r.custom_id, "method": r.method, "url": r.url, "body": orjson.dumps(r.body).decode()}
        for r in read_requests(path, invalid=invalid)
        if r.custom_id not in skip
    ]
    n = blocks or max(1, min(len(items), min_blocks), min(MAX_BLOCKS, math.ceil(len(items) / ROWS_PER_BLOCK)))
    return ray.data.from_items(items, override_num_blocks=n)


def map_requests(
    ds: ray.data.Dataset,
    settings: PilotSettings,
    *,
    actors: int = 4,
    batch_size: int = 16,
    num_cpus: float = 0.25,
    concurrent_batches: int = 2,
) -> ray.data.Dataset:
    """``ds`` (:data:`~ratepilot.ray.REQUEST_COLUMNS`) mapped through a pool of ``actors`` :class:`PilotUDF` actors:
    one result row per request (:data:`~ratepilot.ray.RESULT_SCHEMA`), lazily, as Ray Data does.

    ``num_cpus``: what each actor reserves (it mostly waits on the network and the limiter);
    ``concurrent_batches``: batches one actor works on at once (so that a batch's slowest request does not leave
    the actor idle). Clears the job's stop flag, so a job stopped for quota runs again once credit is added: do
    not call it while another dataset of the same ``settings.job`` is running.
    """
    control = RunControl(settings)
    try:
        control.clear()
    finally:
        control.close()
    compute = ray.data.ActorPoolStrategy(
        size=actors,
        max_concurrent_calls_per_actor=concurrent_batches,
        enable_true_multi_threading=concurrent_batches > 1,
    )
    return ds.map_batches(
        PilotUDF,
        fn_constructor_kwargs={"settings": settings},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=compute,
        num_cpus=num_cpus,
    )


def result_line(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The results-file line (``ratepilot run``'s format) for a result row, or None when the row is not final:
    not sent, no answer after every retry, stopped, or a rejected key — a rerun asks those again."""
    status = row.get("status_code")
    custom_id = str(row["custom_id"])
    if status is not None:
        if status in (401, 403):
            return None
        raw = row.get("body")
        body = orjson.loads(raw) if raw is not None else None
        return response_result(custom_id, int(status), row.get("request_id"), body)
    error = orjson.loads(row["error"]) if row.get("error") else {}
    code = str(error.get("code") or "")
    if code in FINAL_ERRORS:
        return error_result(custom_id, code, str(error.get("message") or ""))
    return None


@dataclass
class RunReport:
    """What :func:`run_dataset` did; ``exit_code`` follows ``ratepilot run``'s scheme."""

    results_file: str
    already_done: int  # results present before this run (resumed)
    total: int | None = None  # requests in the input (None: a Dataset whose size was not counted)
    answered: int = 0  # got an HTTP answer in this run (recorded)
    succeeded: int = 0
    http_errors: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)
    error_lines: int = 0  # recorded without an HTTP answer (request too large, invalid row)
    unfinished: int = 0  # no answer after every retry: not recorded, a rerun asks again
    not_started: int = 0  # not sent because the job stopped (rows seen; a stop may leave others unseen)
    done: int = 0  # results in the file now
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    stop: str | None = None
    message: str = ""
    exit_code: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cost_usd"] = round(self.cost_usd, 6)
        data["elapsed_s"] = round(self.elapsed_s, 3)
        return data


def run_dataset(
    source: ray.data.Dataset | str | os.PathLike[str],
    results: str | os.PathLike[str],
    settings: PilotSettings,
    *,
    actors: int = 4,
    batch_size: int = 16,
    num_cpus: float = 0.25,
    concurrent_batches: int = 2,
    overwrite: bool = False,
    name: str | None = None,
) -> RunReport:
    """Send every request of ``source`` (a requests JSONL path, or a Dataset with :data:`REQUEST_COLUMNS`)
    through ``actors`` actors sharing ``settings.store``, and append the results to ``results``.

    Resumable: rows whose custom_id already has a result in ``results`` are not sent. A JSONL source is the same
    job as ``ratepilot run`` on that file (either resumes the other); a Dataset source is the job ``name``
    (default: the results file's name). One process writes a results file at a time (the same lock as
    ``ratepilot run``). Each run has its own job id (stop flag, budget ledger); the budget counts what the results
    already on disk cost, as ``ratepilot run`` does.

    Raises :class:`~ratepilot.requests.RequestsFileError` (an invalid JSONL line, nothing sent),
    :class:`~ratepilot.results.ForeignResultsError` and :class:`~ratepilot.joblock.JobLocked`; every other outcome
    is in the returned report's ``stop`` / ``exit_code``.
    """
    started = time.monotonic()
    out_path = Path(results)
    requests: Path | None = None
    given: ray.data.Dataset | None = None
    if isinstance(source, str | os.PathLike):
        requests = Path(source)
        # Validated before the results file is touched: a bad line is named, and nothing is written or sent.
        for _ in read_requests(requests):
            pass
        job_id = job_id_for_file(requests)
    else:
        given = source
        job_id = f"dataset:{name or out_path.name}"
    with job_lock(lock_path(out_path), f"results file {out_path}"):
        writer = open_results(out_path, job_id, requests=requests, overwrite=overwrite, extra={"command": "ray"})
        try:
            done = finished_ids(out_path)
            report = RunReport(str(out_path), already_done=len(done), done=len(done))
            if requests is not None:
                ds = from_jsonl(requests, skip=done, min_blocks=actors)
                pending = ds.count()
                report.total = pending + len(done)
                if pending == 0:
                    report.message = "nothing to do: every request already has a result"
                    return report
                actors = min(actors, pending)  # an actor with no block to work on would only cost its start-up
            else:
                assert given is not None
                ds = _without(given, done) if done else given
            prices = PriceTable()
            spent = spent_on(out_path, prices) if settings.budget_usd is not None and done else 0.0
            run = replace(settings, job=uuid.uuid4().hex, budget_spent_usd=spent)
            sizing: dict[str, Any] = {
                "batch_size": batch_size,
                "num_cpus": num_cpus,
                "concurrent_batches": concurrent_batches,
            }
            try:
                _drain(map_requests(ds, run, actors=actors, **sizing), run, writer, report, prices)
            except StoreUnavailable as exc:  # Redis did not answer the driver: nothing more can be sent safely
                report.stop, report.message = "store", exc.message
        finally:
            writer.close()
    _conclude(report)
    report.elapsed_s = time.monotonic() - started
    return report


def _drain(mapped: ray.data.Dataset, run: PilotSettings, writer: Any, report: RunReport, prices: PriceTable) -> None:
    """Write the results as they stream back, to the last block.

    Even after a stop: blocks still in the actors' hands hold answers already paid for (the requests in flight
    when the stop came, and after a budget stop those already admitted), and a result not written is a request a
    rerun pays for again. The rest of the rows cost no request: every actor answers them "stopped" at once.
    """
    control = RunControl(run)
    batches: Iterator[Any] = iter(mapped.iter_batches(batch_size=None, batch_format="pyarrow"))
    try:
        for table in batches:
            for row in table.select(list(RESULT_COLUMNS)).to_pylist():
                _count(row, report, prices)
                line = result_line(row)
                if line is not None:
                    writer.append(line)
            report.done += writer.sync()
            if report.stop is None:
                _look_for_stop(control, report)
    finally:
        close = getattr(batches, "close", None)
        if callable(close):
            close()  # ends the streaming execution now, not when the iterator is collected
        _tidy(run, control)


def _look_for_stop(control: RunControl, report: RunReport) -> None:
    try:
        found = control.stopped()
    except StoreUnavailable as exc:  # the actors meet it too, and stop (their rows say store_unavailable)
        found = ("store", exc.message)
    if found is not None:
        report.stop, report.message = found
        log.warning("ratepilot.ray: the job stopped (%s); writing the answers still in flight", found[0])


def _tidy(run: PilotSettings, control: RunControl) -> None:
    """Remove this run's stop flag and budget ledger (the next run has a job id of its own); best effort."""
    from ..client.shared_budget import SharedBudget

    try:
        with contextlib.suppress(StoreUnavailable):
            control.clear()
            if run.budget_usd is not None:
                ledger = SharedBudget(run.store, run.job, run.budget_usd)
                try:
                    ledger.delete()
                finally:
                    ledger.close()
    finally:
        control.close()


def _count(row: Mapping[str, Any], report: RunReport, prices: PriceTable) -> None:
    status = row.get("status_code")
    if status is not None:
        if status in (401, 403):
            report.unfinished += 1
            return
        report.answered += 1
        body = orjson.loads(row["body"]) if row.get("body") is not None else None
        usage = usage_from_body(body)
        if usage is not None and isinstance(body, dict):
            report.cost_usd += prices.cost(str(body.get("model") or ""), usage.prompt, usage.completion, usage.cached)
            report.prompt_tokens += usage.prompt
            report.completion_tokens += usage.completion
        if 200 <= int(status) < 300:
            report.succeeded += 1
            return
        report.http_errors += 1
        code = result_error_code({"response": {"status_code": status, "body": body}})
        report.errors_by_code[code] = report.errors_by_code.get(code, 0) + 1
        return
    error = orjson.loads(row["error"]) if row.get("error") else {}
    code = str(error.get("code") or "")
    if code in FINAL_ERRORS:
        report.error_lines += 1
        report.errors_by_code[code] = report.errors_by_code.get(code, 0) + 1
    elif code in _NOT_SENT:
        report.not_started += 1
    else:
        report.unfinished += 1


def _conclude(report: RunReport) -> None:
    if report.total is not None:
        report.not_started = max(report.not_started, report.total - report.done - report.unfinished)
    if report.stop in STOP_EXIT_CODES:
        report.exit_code = STOP_EXIT_CODES[report.stop]
        report.message = f"{report.message}\n{_STOP_ADVICE.get(report.stop, '')}".strip()
    elif report.unfinished or report.not_started:
        report.exit_code = ExitCode.INCOMPLETE
        report.message = f"{report.unfinished} request(s) got no answer; rerun to ask them again."
    elif report.http_errors:
        report.exit_code = ExitCode.HTTP_ERRORS
        codes = by_code(report.errors_by_code)
        report.message = f"{report.http_errors:,} result(s) are HTTP errors ({codes}): see their response.body."
    else:
        report.exit_code = ExitCode.OK


def _without(ds: ray.data.Dataset, done: set[str]) -> ray.data.Dataset:
    """``ds`` less the rows whose custom_id is in ``done`` (vectorized: one ``is_in`` per batch)."""
    finished = pa.array(sorted(done), type=pa.string())

    def keep(table: Any) -> Any:
        return table.filter(pc.invert(pc.is_in(table["custom_id"], value_set=finished)))

    return ds.map_batches(keep, batch_format="pyarrow", batch_size=None)
