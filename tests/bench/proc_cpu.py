"""CPU time of a process, for the benchmarks that report where the time goes."""

from __future__ import annotations

import contextlib
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """CPU time of all of a process's threads, in ns from the scheduler (/proc/PID/task/*/
    schedstat), not the clock ticks of /proc/PID/stat (10 ms each: 0.3 % of a 3 s window)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def minor_faults(pid: int) -> int:
    """The process's minor page faults so far (/proc/PID/stat, field 10)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[7])
