"""The campaign queue (engine.jobs): cached jobs shared by processes through file locks."""

import fcntl
import multiprocessing

import pytest

from dynamicdet.engine.jobs import Job, work


def _file_job(folder, name, needs=None, log=None):
    out = folder / f"{name}.done"

    def run():
        if log is not None:
            log.append(name)
        out.write_text("ok")

    ready = (lambda: (folder / f"{needs}.done").exists()) if needs else (lambda: True)
    return Job(name, run, out.exists, ready)


def test_work_runs_what_is_not_done_in_order_and_waits_for_what_a_job_needs(tmp_path):
    (tmp_path / "a.done").write_text("ok")  # done before: skipped
    ran = []
    jobs = [
        _file_job(tmp_path, "b", needs="c", log=ran),
        _file_job(tmp_path, "a", log=ran),
        _file_job(tmp_path, "c", log=ran),
    ]
    assert work(jobs, tmp_path / "locks", poll_s=0, log=lambda m: None) == ["c", "b"]
    assert ran == ["c", "b"]  # b waited until c, which it needs, was done
    assert work(jobs, tmp_path / "locks", poll_s=0, log=lambda m: None) == []  # a finished campaign runs nothing


def _hold(lock, started, release):
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        started.set()
        release.wait(30)


def test_a_job_another_process_holds_is_left_to_it(tmp_path):
    (tmp_path / "locks").mkdir()
    ctx = multiprocessing.get_context("fork")
    started, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path / "locks" / "x.lock", started, release))
    holder.start()
    try:
        assert started.wait(30)
        ran = []
        x, y = _file_job(tmp_path, "x", log=ran), _file_job(tmp_path, "y", log=ran)
        seen = []

        def log(message):
            seen.append(message)
            if len(ran) == 1 and not (tmp_path / "x.done").exists():  # the other process finishes x
                (tmp_path / "x.done").write_text("ok")

        assert work([x, y], tmp_path / "locks", poll_s=0, log=log) == ["y"]
        assert ran == ["y"]  # x was held by the other process: never run here
    finally:
        release.set()
        holder.join(30)


def test_a_job_that_leaves_no_artefact_is_an_error_not_a_loop(tmp_path):
    job = Job("broken", run=lambda: None, done=lambda: False)
    with pytest.raises(RuntimeError, match="job broken ran but its artefact is missing"):
        work([job], tmp_path / "locks", poll_s=0, log=lambda m: None)
