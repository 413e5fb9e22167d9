"""The audit log's appender when a write stops short, as on a disk that fills mid-line: the
fragment is cut off, the append fails, and the chain goes on whole once there is room again.
A file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes the kernel write part of a line, in a
process of its own so that the limit binds nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from libkiki.audit import read_entries, verify

pytestmark = pytest.mark.integration

SCRIPT = """
import errno, os, resource, signal, sys
from pathlib import Path
from kiki_tool_broker.audit import AuditLog

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
log = AuditLog(Path(sys.argv[1]))

def call(i):
    log.append(caller={"uid": 1000, "gid": 1000, "pid": 42}, tool="dev.kiki.test.t", outcome="ok",
               code=None, duration_us=1, arguments={"i": i})

call(0)
size = os.path.getsize(log.path)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + size // 2, resource.RLIM_INFINITY))
try:
    call(1)
except OSError as exc:
    assert exc.errno == errno.ENOSPC, exc
    print("refused", os.path.getsize(log.path) == size, flush=True)
else:
    raise SystemExit("the short write was not refused")
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
call(2)
"""


def test_a_short_write_leaves_no_torn_line_and_the_chain_goes_on(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["refused", "True"]  # cut back to where it was
    log = tmp_path / "audit.jsonl"
    assert log.read_bytes().endswith(b"\n")
    entries = read_entries(log)
    assert [e["seq"] for e in entries] == [1, 2]
    assert list(verify(log, tmp_path / "audit.head")) == []
