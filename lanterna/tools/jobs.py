"""`get_job` and `cancel_job`: collect or stop a generation that outlived its call's wait."""

from __future__ import annotations

from pydantic import BaseModel, Field

from lanterna.server.jobs import JobNotFound
from lanterna.server.runtime import Runtime
from lanterna.tools.common import ArgumentError, Outcome, ProgressReport, job_outcome, summary_text

GET_NAME = "get_job"
GET_DESCRIPTION = """Wait for a generation job (from generate_image, generate_video or edit that answered
status 'running') and return its result: the same previews, links and structured content the
original call would have returned. Waits up to wait_seconds; if it is still running you get its
progress and can call get_job again."""

CANCEL_NAME = "cancel_job"
CANCEL_DESCRIPTION = """Cancel a generation job. A queued job never starts; a running one stops at its next
denoising step, which frees the model for other jobs. Returns the job's state."""


class GetJobArgs(BaseModel):
    job_id: str = Field(min_length=1, max_length=100, description="The job_id a generation call returned.")
    wait_seconds: float = Field(50.0, ge=0.0, le=600.0, description="Seconds to wait for the job to finish; "
                                "0 just reports its state.")


class CancelJobArgs(BaseModel):
    job_id: str = Field(min_length=1, max_length=100, description="The job_id to cancel.")


class CancelReport(BaseModel):
    job_id: str
    status: str = Field(description="'cancelled'; 'cancelling' if its step is still running; "
                        "'done'/'failed' if it had already finished")
    was_running: bool


async def get_job(args: GetJobArgs, rt: Runtime, report: ProgressReport | None = None) -> Outcome:
    try:
        job = rt.jobs.get(args.job_id)
    except JobNotFound as e:
        raise ArgumentError(str(e)) from None
    # Abandoning get_job (a client timeout) must not cancel the job: only cancel_job or the original call does.
    await rt.jobs.wait(job, args.wait_seconds, report, cancel_on_abort=False)
    return job_outcome(job)


async def cancel_job(args: CancelJobArgs, rt: Runtime) -> Outcome:
    try:
        job = rt.jobs.get(args.job_id)
    except JobNotFound as e:
        raise ArgumentError(str(e)) from None
    was_running = job.state == "running"
    if not job.finished:
        rt.jobs.cancel(job)
        await rt.jobs.wait(job, 10.0)  # a running job stops at its next step
    status = job.state if job.finished else "cancelling"
    result = CancelReport(job_id=job.id, status=status, was_running=was_running)
    return Outcome(result, [summary_text(result)])
