"""Beat jobs: one copy at a time, outcomes kept in PostgreSQL and shown in /health, run by the
real Celery worker."""

from __future__ import annotations

import threading
import time

import pytest
import requests
from celery import Celery

from tests.conftest import REDIS_URL
from tests.support.processes import wait_for
from ticker.db import session_for
from ticker.jobs import BUSY, FAILED, KNOWN_JOBS, NEVER_RUN, OK, job_statuses, run_job
from ticker.web import jobs_health


def statuses(database: str) -> dict[str, dict]:
    with session_for(database) as session:
        return job_statuses(session)


def test_a_second_copy_of_a_running_job_does_nothing(redis, database):
    started, release = threading.Event(), threading.Event()
    runs = []

    def body():
        runs.append(1)
        started.set()
        release.wait(5)
        return "done"

    first = threading.Thread(target=lambda: runs.append(run_job(redis, database, "test_lock", body, 30)))
    first.start()
    started.wait(5)
    assert run_job(redis, database, "test_lock", body, 30) == BUSY
    release.set()
    first.join()
    assert runs == [1, "done"]
    assert statuses(database)["test_lock"]["outcome"] == OK


def test_a_failed_job_is_recorded_with_its_reason_and_raised(redis, database):
    def body():
        raise RuntimeError("Kite answered 503")

    with pytest.raises(RuntimeError):
        run_job(redis, database, "test_failure", body, 30)
    status = statuses(database)["test_failure"]
    assert status["outcome"] == FAILED and "Kite answered 503" in status["detail"]
    assert status["last_ok"] is None
    assert run_job(redis, database, "test_failure", lambda: "fine", 30) == "fine"  # the lock was released
    succeeded = statuses(database)["test_failure"]
    assert succeeded["outcome"] == OK and succeeded["last_ok"] == succeeded["last_run"] > status["last_run"]

    with pytest.raises(RuntimeError):
        run_job(redis, database, "test_failure", body, 30)
    assert statuses(database)["test_failure"]["last_ok"] == succeeded["last_ok"]  # a failure keeps it


def test_health_lists_a_known_job_that_has_not_run_yet(app, monkeypatch):
    monkeypatch.setattr(jobs_health, "job_statuses", lambda _session: {})
    with app.app_context():
        jobs = jobs_health.check_jobs()["jobs"]
    assert set(jobs) == set(KNOWN_JOBS)
    assert {job["outcome"] for job in jobs.values()} == {NEVER_RUN}
    assert all(job["last_run"] is None and "runs" in job["detail"] for job in jobs.values())


@pytest.mark.integration
def test_a_starting_worker_checks_the_tokens_at_once(stack):
    """Beat's next token check may be a quarter hour away: the worker's start runs one."""
    def checked():
        job = requests.get(f"{stack['url']}/health", timeout=5).json()["checks"]["jobs"]["jobs"]["token_check"]
        return job if job["outcome"] == OK else None

    assert "sim_key: valid" in wait_for(checked, 30, "the token check of the worker's start")["detail"]


@pytest.mark.integration
def test_the_worker_runs_beats_jobs_and_health_shows_them(stack):
    sender = Celery("test-sender", broker=REDIS_URL)
    asked = time.time()
    sender.send_task("tasks.registry.reload_registry", queue="default")
    sender.send_task("tasks.registry.reload_registry", queue="default")  # twice at once: safe
    sender.send_task("tasks.accounts.check_tokens", queue="default")

    def jobs():
        checks = requests.get(f"{stack['url']}/health", timeout=5).json()["checks"]["jobs"]
        done = {name: job for name, job in checks["jobs"].items() if (job["last_run"] or 0) >= asked - 1}
        return checks if {"registry_reload", "token_check"} <= set(done) else None

    try:
        checks = wait_for(jobs, 60, "the reload and the token check to report", interval=0.5)
    except AssertionError:
        lines = stack["jobs"].output().splitlines()
        print("\n".join(line for line in lines if "registry" in line or "token" in line or "ERROR" in line)[-5000:])
        raise
    assert checks["ok"] is True
    assert checks["jobs"]["registry_reload"]["outcome"] == OK, checks["jobs"]["registry_reload"]
    assert "instruments" in checks["jobs"]["registry_reload"]["detail"]
    token_check = checks["jobs"]["token_check"]
    assert token_check["outcome"] == OK and "sim_key: valid" in token_check["detail"], token_check
    assert requests.get(f"{stack['url']}/health", timeout=5).status_code == 200
