"""Collecting finished batches: downloads (restarted when cut off), indexing, the results file, tidying up."""

from __future__ import annotations

import json
import os
from pathlib import Path

import openai

from ..errors import RatePilotError
from ..results import fsync_dir, open_results
from .base import (
    MAX_CREATE_FAULTS,
    RunnerBase,
    cut_off,
    job_config,
)
from .collect import CollectSummary, index_result_file, write_ordered_results
from .crash import crash_point
from .machine import (
    unanswered_outcome,
)
from .state import JobRecord, ShardRecord, ShardState

__all__ = ["Collecting"]


class Collecting(RunnerBase):
    """The collecting part of :class:`~ratepilot.batch.runner.BatchRunner` (see the module docstring)."""

    def _collect_finished(self, job: JobRecord) -> None:
        for shard in self.store.shards(job):
            if shard.state == ShardState.FINISHED:
                self._collect_shard(job, shard)

    def _download(self, file_id: str, target: Path) -> None:
        if target.exists():
            return  # renamed into place only when complete
        part = target.with_name(target.name + ".part")
        for attempt in range(1, MAX_CREATE_FAULTS + 1):
            try:
                with self.client.files.with_streaming_response.content(file_id) as response, open(part, "wb") as fh:
                    for chunk in response.iter_bytes(1 << 20):
                        fh.write(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
                break
            except Exception as exc:
                # The transport retries a request that fails, but a body cut off while streaming surfaces here,
                # as the HTTP library's own error: the download starts over (the .part file is rewritten).
                if not cut_off(exc) or attempt == MAX_CREATE_FAULTS:
                    raise
                self.clock.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)))
        os.replace(part, target)
        fsync_dir(target.parent)  # indexed (and the shard marked collected) next: the file must outlive a crash

    def _collect_shard(self, job: JobRecord, shard: ShardRecord) -> None:
        files: list[tuple[str, Path]] = []
        for kind, file_id in (("output", shard.output_file_id), ("error", shard.error_file_id)):
            if file_id:
                target = self._job_dir(job) / f"{kind}-{shard.shard:05d}-{shard.submit_no}.jsonl"
                self._download(file_id, target)
                files.append((kind, target))
                crash_point("during-collect")
        with self.store.bulk():
            for kind, target in files:
                file_no = self.store.add_file(job, str(target), kind)
                index_result_file(self.store, job, shard.shard, file_no, target)
            state, code = unanswered_outcome(shard.batch_status, shard.error_code)
            self.store.mark_unanswered(job, shard.shard, state, code)
            self.store.update_shard(shard, state=ShardState.COLLECTED, event="collected")

    def _keeps_files(self, job: JobRecord) -> bool:
        """Whether the job's input files stay on the server once it is done: asked for by this runner's
        config, or by the one that planned the job or drove it earlier (a later command without the flag must
        not delete what ``submit --keep-files`` meant to keep)."""
        return self.config.keep_files or bool(job_config(job).get("keep_files"))

    def _remember_keep_files(self, job: JobRecord) -> None:
        """Record ``keep_files`` on the job (it may be turned on after submit, never off again)."""
        stored = job_config(job)
        if not stored.get("keep_files"):
            self.store.update_job(job, config=json.dumps({**stored, "keep_files": True}))

    def _delete_inputs(self, job: JobRecord) -> None:
        """The job is finished: delete the input files it uploaded (they count against the organization's
        file storage and are never needed again). Best effort: a file that cannot be deleted is recorded in the
        job's events, not an error of a job whose results are all in."""
        for shard in self.store.shards(job):
            if shard.file_id is None:
                continue
            try:
                self.client.files.delete(shard.file_id)
            except openai.NotFoundError:
                pass  # deleted by an earlier run that crashed before the job was marked done (or expired)
            except (openai.APIError, RatePilotError) as exc:
                self.store.log(job, "input-delete-failed", f"{shard.file_id}: {type(exc).__name__}", shard=shard.shard)
                continue
            self.store.log(job, "input-deleted", shard.file_id, shard=shard.shard)
            crash_point("during-cleanup")

    def _write_results(self, job: JobRecord, output: Path, *, overwrite: bool) -> CollectSummary:
        writer = open_results(
            output,
            f"batch:{job.name}:{job.nonce}",
            requests=job.input_path,
            overwrite=overwrite,
            extra={"mode": "batch", "job": job.name},
        )
        writer.close()
        return write_ordered_results(self.store, job, output)
