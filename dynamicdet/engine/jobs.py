"""Long training campaigns as a queue of cached jobs that several processes share.

A :class:`Job` is one cached stage (a step-1 run, a router, a static model...): ``done`` says
whether its artefact exists, ``ready`` whether the jobs it builds on are done, ``run`` makes it
(resuming where an interrupted run stopped: every stage of :mod:`dynamicdet.engine.runs` does).
:func:`work` runs the queue in one process; start it in as many processes as there are
cores (each with one torch thread) and they share the jobs: a job is taken under an exclusive
file lock (``<lock_dir>/<name>.lock``, released by the OS if the process dies), so two
processes never train the same model, and a killed campaign restarts where it stopped.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Job:
    """One cached unit of work of a campaign.

    Attributes:
        name: unique, file-name safe (``seed3-joint``); names its lock file and its log lines.
        run: makes the artefact (resumes an interrupted run).
        done: whether the artefact exists (then the job is skipped).
        ready: whether the jobs it needs are done (else it waits; default: always ready).
    """

    name: str
    run: Callable[[], object]
    done: Callable[[], bool]
    ready: Callable[[], bool] = lambda: True


def work(jobs: list[Job], lock_dir: Path, poll_s: float = 60.0, log: Callable[[str], None] = print) -> list[str]:
    """Run every job that is not done, in order, skipping those another process holds.

    Loops until every job is done or none is left that this process can take (the rest are
    held by other processes or wait for one). A job that raises stops this process (the
    exception propagates) and releases its lock.

    Args:
        jobs: the campaign, in the order to take them.
        lock_dir: where the lock files live (one per job).
        poll_s: seconds to wait before looking again when every remaining job waits for another.
        log: where progress lines go.

    Returns:
        The names of the jobs this process ran.
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    ran: list[str] = []
    while True:
        pending = [j for j in jobs if not j.done()]
        if not pending:
            return ran
        took = False
        for job in pending:
            if not job.ready():
                continue
            with open(lock_dir / f"{job.name}.lock", "w") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # another process runs it
                    continue
                try:
                    if job.done():  # finished by another process since the list was made
                        continue
                    t0 = time.time()
                    log(f"{job.name}: start")
                    job.run()
                    if not job.done():
                        raise RuntimeError(f"job {job.name} ran but its artefact is missing (a bug in its done())")
                    log(f"{job.name}: done in {(time.time() - t0) / 60:.1f} min")
                    ran.append(job.name)
                    took = True
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
            break  # look at the queue again from the top: earlier jobs may have become ready
        if not took:
            if not any(j.ready() for j in pending if not j.done()):
                log(f"waiting: {len(pending)} job(s) wait for others ({', '.join(j.name for j in pending[:4])} ...)")
            time.sleep(poll_s)
