"""What a benchmark ran on, printed with its figures."""

from __future__ import annotations

import os
import platform
import subprocess


def describe() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    redis_version = next((w.split("=")[1] for w in redis if w.startswith("v=")), "?")
    load = os.getloadavg()[0]
    return (f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Python {platform.python_version()}, "
            f"Redis {redis_version}, load average {load:.2f} at start")
