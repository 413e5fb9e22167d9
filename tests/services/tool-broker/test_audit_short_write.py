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
    assert exc.errno == errno.EIO, exc
    assert "stopped after" in str(exc), exc
    print("refused", os.path.getsize(log.path) == size, flush=True)
else:
    raise SystemExit("the short write was not refused")
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
call(2)
"""

# As SCRIPT, but cutting the fragment off fails once (ftruncate: EIO): the failed append leaves
# the fragment, and the next one cuts it off before its own line.
CUT_LATER = """
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
ftruncate, fails = os.ftruncate, [1]

def flaky(fd, length):
    if fails:
        fails.pop()
        raise OSError(errno.EIO, "flaky")
    ftruncate(fd, length)

os.ftruncate = flaky
resource.setrlimit(resource.RLIMIT_FSIZE, (size + size // 2, resource.RLIM_INFINITY))
try:
    call(1)
except OSError as exc:
    assert exc.errno == errno.EIO and "stopped after" in str(exc), exc
    print("left", os.path.getsize(log.path) > size, flush=True)
else:
    raise SystemExit("the short write was not refused")
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
call(2)
"""


def run(script: str, directory: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", script, str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def assert_whole(directory: Path) -> None:
    log = directory / "audit.jsonl"
    assert log.read_bytes().endswith(b"\n")
    entries = read_entries(log)
    assert [e["seq"] for e in entries] == [1, 2]
    assert list(verify(log, directory / "audit.head")) == []


def test_a_short_write_leaves_no_torn_line_and_the_chain_goes_on(tmp_path: Path) -> None:
    assert run(SCRIPT, tmp_path) == ["refused", "True"]  # cut back to where it was
    assert_whole(tmp_path)


def test_a_fragment_that_could_not_be_cut_off_is_cut_before_the_next_line(tmp_path: Path) -> None:
    assert run(CUT_LATER, tmp_path) == ["left", "True"]  # the fragment stayed, for now
    assert_whole(tmp_path)
