"""`flask instruments load`: a progress bar, then the summary once, and /health's record of it."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import DATABASE_URL
from tests.support.processes import ROOT, VENV_BIN
from ticker.db import session_for
from ticker.jobs import OK, job_statuses
from ticker.registry import migrate

pytestmark = pytest.mark.integration


def test_a_manual_load_prints_its_summary_once_and_is_recorded_as_the_reload_job(service_env, sim, private_redis):
    database = migrate.recreate_database(DATABASE_URL + "_load_command")
    port = private_redis.connection_pool.connection_kwargs["port"]
    env = {**service_env, "DATABASE_URL": database, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    run = subprocess.run([str(VENV_BIN / "flask"), "--app", "ticker", "instruments", "load"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)

    assert run.returncode == 0, run.stderr
    output = run.stdout + run.stderr
    assert output.count(" instruments: ") == 1, output  # the summary: "N instruments: …"
    assert all(" ts=" not in line for line in run.stderr.splitlines()), run.stderr  # no log glued to the bar
    with session_for(database) as session:
        assert job_statuses(session)["registry_reload"]["outcome"] == OK
