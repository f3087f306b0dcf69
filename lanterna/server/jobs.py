"""Jobs: every generation runs on its engine's own worker thread, behind a bounded queue.

A tool call submits a job and waits for it up to `wait_seconds`; after that it answers
`status: running` with the job id and the job carries on, to be collected with `get_job`.
Cancelling (the `cancel_job` tool, or the client cancelling the original call) sets a flag the
engine reads once per step, so the worker is free again after at most one step.

Waiting happens in a thread from anyio's pool (`anyio.to_thread.run_sync` on a condition
variable), so the engine's thread never blocks on the event loop: a step only notifies.
"""

from __future__ import annotations

import collections
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.to_thread

from lanterna.engines.base import GenerationCancelled, InvalidRequest

log = logging.getLogger("lanterna.server.jobs")

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
ProgressReport = Callable[[float, float | None, str], Awaitable[None]]
WAIT_SLICE_SECONDS = 0.5
# Waiters sit in threads; give them their own pool so they never starve other blocking work.
WAITERS = anyio.CapacityLimiter(256)


class QueueFull(RuntimeError):
    pass


class JobNotFound(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class JobFailure(Exception):
    """Raised by a job's work for a failure whose message is fit for the client."""


class Job:
    """One unit of work on an engine's queue; all fields are read by other threads under `_cond`."""

    def __init__(self, job_id: str, queue: str, kind: str, work: Callable[[Job], Any],
                 total_steps: int, meta: dict[str, Any] | None = None) -> None:
        self.id = job_id
        self.queue = queue
        self.kind = kind
        self.work = work
        self.meta = meta or {}
        self.state: JobState = "queued"
        self.result: Any = None
        self.error: str | None = None
        self.invalid_request = False
        self.step = 0
        self.total_steps = total_steps
        self.position = 0  # 1-based place in the queue while queued
        self.first_position = 0
        self.submitted_at = time.monotonic()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.version = 0
        self._cancel = threading.Event()
        self._cond = threading.Condition()

    # read from any thread

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def queue_seconds(self) -> float:
        end = self.started_at or self.finished_at or time.monotonic()
        return end - self.submitted_at

    def cancelled(self) -> bool:
        """The flag engines poll once per step."""
        return self._cancel.is_set()

    def raise_if_cancelled(self) -> None:
        if self.cancelled():
            raise GenerationCancelled(f"job {self.id} was cancelled")

    def snapshot(self) -> tuple[JobState, int, int, int, int]:
        """(state, step, total_steps, position, first_position), read together."""
        with self._cond:
            return self.state, self.step, self.total_steps, self.position, self.first_position

    def wait_change(self, seen_version: int, timeout: float) -> int:
        with self._cond:
            if self.version == seen_version and not self.finished:
                self._cond.wait(timeout)
            return self.version

    # changed by the worker (and cancel) only

    def _changed(self, **fields: Any) -> None:
        with self._cond:
            for key, value in fields.items():
                setattr(self, key, value)
            self.version += 1
            self._cond.notify_all()

    def on_step(self, step: int, total: int) -> None:
        """Engines' step callback."""
        self._changed(step=step, total_steps=total)

    def cancel(self) -> None:
        self._cancel.set()
        self._changed()


@dataclass
class EngineQueue:
    """The pending jobs of one engine, and the thread that serves them in order."""

    name: str
    capacity: int

    def __post_init__(self) -> None:
        self.pending: collections.deque[Job] = collections.deque()
        self.running: Job | None = None
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self.serve, name=f"lanterna-{self.name}", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.cond:
            if len(self.pending) >= self.capacity:
                raise QueueFull(
                    f"busy: model {self.name!r} already has {len(self.pending)} jobs waiting (the limit); "
                    f"try again in a little while, or cancel a job with cancel_job")
            self.pending.append(job)
            position = len(self.pending) + (self.running is not None)
            job._changed(position=position, first_position=position)
            self.cond.notify()

    def serve(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.stopping:
                    self.cond.wait()
                if self.stopping:
                    return
                job = self.pending.popleft()
                self.running = job
                for i, waiting in enumerate(self.pending):
                    waiting._changed(position=i + 2)
            try:
                run_job(job)
            finally:
                with self.cond:
                    self.running = None
                    for i, waiting in enumerate(self.pending):
                        waiting._changed(position=i + 1)

    def withdraw(self, job: Job) -> bool:
        """Take a job that has not started off the queue (True if it was still waiting)."""
        with self.cond:
            if job not in self.pending:
                return False
            self.pending.remove(job)
            job._changed(state="cancelled", finished_at=time.monotonic(), position=0)
            for i, waiting in enumerate(self.pending):
                waiting._changed(position=i + 1 + (self.running is not None))
            return True

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            for job in self.pending:
                job.cancel()
                job._changed(state="cancelled", finished_at=time.monotonic())
            self.pending.clear()
            if self.running is not None:
                self.running.cancel()
            self.cond.notify_all()


def run_job(job: Job) -> None:
    if job.cancelled():
        job._changed(state="cancelled", finished_at=time.monotonic())
        return
    job._changed(state="running", started_at=time.monotonic(), position=0)
    state: JobState = "done"
    fields: dict[str, Any] = {}
    try:
        fields["result"] = job.work(job)
        if job.cancelled():
            state = "cancelled"
    except GenerationCancelled:
        state = "cancelled"
    except InvalidRequest as e:
        state, fields = "failed", {"error": str(e), "invalid_request": True}
    except (JobFailure, FloatingPointError) as e:
        state, fields = "failed", {"error": str(e)}
    except MemoryError:
        state, fields = "failed", {"error": "the engine ran out of memory; try a smaller size, fewer images or steps"}
    except Exception as e:  # the worker must survive anything an engine does
        log.exception("job %s on %s failed", job.id, job.queue)
        state, fields = "failed", {"error": f"the engine failed ({type(e).__name__}: {str(e)[:300]})"}
    job._changed(state=state, finished_at=time.monotonic(), **fields)


class JobManager:
    def __init__(self, queue_size: int = 8, keep_finished: int = 256) -> None:
        self.queue_size = queue_size
        self.keep_finished = keep_finished
        self.queues: dict[str, EngineQueue] = {}
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def submit(self, queue: str, kind: str, work: Callable[[Job], Any], total_steps: int,
               meta: dict[str, Any] | None = None) -> Job:
        job = Job(f"job-{next(self._ids)}-{secrets.token_hex(4)}", queue, kind, work, total_steps, meta)
        with self._lock:
            if queue not in self.queues:
                self.queues[queue] = EngineQueue(queue, self.queue_size)
            engine_queue = self.queues[queue]
            self._forget_old()
        engine_queue.submit(job)
        with self._lock:
            self.jobs[job.id] = job
        return job

    def _forget_old(self) -> None:
        finished = [j for j in self.jobs.values() if j.finished]
        for job in finished[: max(0, len(finished) - self.keep_finished)]:
            del self.jobs[job.id]

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            # Other clients' job ids are not listed: an id is the capability to collect or cancel a job.
            raise JobNotFound(f"job_id: no job {job_id!r} (give the job_id a generation call returned; finished "
                              f"jobs are kept for the last {self.keep_finished})")
        return job

    def cancel(self, job: Job) -> None:
        """Stop a job: a queued one leaves the queue at once, a running one stops at its next step."""
        job.cancel()
        queue = self.queues.get(job.queue)
        if queue is not None:
            queue.withdraw(job)

    def pending(self, queue: str) -> int:
        q = self.queues.get(queue)
        return len(q.pending) if q else 0

    def close(self) -> None:
        for q in self.queues.values():
            q.stop()

    async def wait(self, job: Job, timeout: float, report: ProgressReport | None = None,
                   cancel_on_abort: bool = False) -> None:
        """Wait up to `timeout` seconds for `job`, sending progress on every change.

        If the waiting call itself is cancelled (the client cancelled the request) and
        `cancel_on_abort` is set, the job is cancelled too.
        """
        deadline = time.monotonic() + timeout
        reporter = ProgressReporter(report, already_done=job.step) if report is not None else None
        try:
            while True:
                version = job.version  # read before the state, so no change slips between them
                if reporter is not None:
                    await reporter.update(*job.snapshot())
                if job.finished:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                await anyio.to_thread.run_sync(job.wait_change, version, min(remaining, WAIT_SLICE_SECONDS),
                                               abandon_on_cancel=True, limiter=WAITERS)
        except anyio.get_cancelled_exc_class():
            if cancel_on_abort:
                log.info("request for %s was cancelled; cancelling the job", job.id)
                self.cancel(job)
            raise


class ProgressReporter:
    """Turns job snapshots into progress notifications whose value only grows.

    Queue moves are reported in [0, 0.9), the start at 0.95, then every denoising step i as i,
    one notification per step even when several steps passed between two looks at the job.
    """

    def __init__(self, report: ProgressReport, already_done: int = 0) -> None:
        self.report = report
        self.sent_value = -1.0
        # A late waiter (get_job) starts from the current step rather than replaying the past.
        self.sent_step = max(0, already_done - 1)

    async def send(self, value: float, total: float | None, message: str) -> None:
        if value > self.sent_value:
            self.sent_value = value
            await self.report(value, total, message)

    async def update(self, state: JobState, step: int, total: int, position: int, first_position: int) -> None:
        if state == "queued":
            moved = first_position - position
            await self.send(0.9 * moved / (first_position + 1), None, f"queued: position {position}")
            return
        if step == 0 and state == "running":
            await self.send(0.95, float(total), "started")
        for k in range(self.sent_step + 1, step + 1):
            await self.send(float(k), float(total), f"step {k}/{total}")
        self.sent_step = max(self.sent_step, step)
