"""`make run`'s process runner: the Procfile's processes as `honcho start` runs them, stopped on
Ctrl-C the way a developer expects.

honcho 2.0's `start` stops its processes with SIGTERM to each one's whole process group
(`os.killpg`): a Celery worker's pool children get it too and die under their worker, which
then logs `WorkerLostError` tracebacks and "exited with 'signal 15 (SIGTERM)'"; it SIGKILLs
whatever still runs 5 s later (a shard's warm shutdown can need longer); and it exits 130,
which make reports as `Error 130`. This runner uses honcho's own Manager and Procfile parsing
(honcho 2.0.x), but signals each process alone (a Celery worker ends its pool itself in its
warm shutdown), waits up to `STOP_WAIT_SECS` before SIGKILL, and exits 0 when a Ctrl-C or
SIGTERM stopped every process without a kill. A process that exits by itself still stops the
others, and its exit code is the runner's, as with `honcho start`. Each Procfile command must be
one command (no `&&` or `;`): it is run as `exec COMMAND`.

usage: procfile_run.py PORT PROCESS...   (PORT: the first process's $PORT, as `honcho start -p`)
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from honcho import environ, manager
from honcho.compat import ProcessManager
from honcho.printer import Printer

STOP_WAIT_SECS = 30  # a shard's warm shutdown closes its Kite connection and releases its lease


class EachProcessAlone(ProcessManager):
    """SIGTERM to the process itself, not its group; SIGKILL, if it comes to that, to the group."""

    def terminate(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def main(port: str, names: list[str]) -> int:
    procfile = environ.parse_procfile(Path("Procfile").read_text())
    missing = [name for name in names if name not in procfile.processes]
    if missing:
        print(f"not in the Procfile: {', '.join(missing)}", file=sys.stderr)
        return 2
    manager.KILL_WAIT = STOP_WAIT_SECS
    runner = manager.Manager(Printer(sys.stdout, colour=sys.stdout.isatty()))
    runner._procmgr = EachProcessAlone()  # honcho 2.0's Manager takes no other way to change it
    for process in environ.expand_processes({name: procfile.processes[name] for name in names}, port=int(port)):
        # `exec`: the shell honcho starts the command with becomes the command, so the signal
        # reaches the program itself (dash would otherwise hold it as a child, and ignore it).
        runner.add_process(process.name, f"exec {process.cmd}", quiet=process.quiet,
                           env={**os.environ, **process.env})
    runner.loop()
    killed = any(entry.get("returncode") == -signal.SIGKILL for entry in runner._processes.values())
    if runner.returncode in (130, 143) and not killed:  # Ctrl-C or SIGTERM, and a clean stop
        print("stopped", flush=True)
        return 0
    return runner.returncode or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
