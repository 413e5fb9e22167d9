"""Mapping rings in POSIX shared memory (``/dev/shm``), without posix_ipc.

On Linux, ``shm_open(name)`` is ``open("/dev/shm/" + name)``: readers use plain ``os.open`` and
``mmap``, so libkiki needs no compiled dependency. Readers open ``O_RDONLY`` and map
``PROT_READ``: with the segments' mode 0640 the kernel refuses them write access twice over.
(The publisher creates its own segments with posix_ipc; apps that register an external sensor
create theirs here, with :func:`create_segment`.)
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import stat
from pathlib import Path
from typing import Final

from libkiki.errors import InvalidParams, NotFound, PermissionDenied
from libkiki.sensors.layout import Layout
from libkiki.sensors.ring import RingReader, RingWriter, read_header, segment_size

SHM_DIR: Final = Path("/dev/shm")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


def check_segment_name(name: str) -> str:
    if not _SEGMENT.match(name):
        raise InvalidParams(f"{name!r} is not a valid shared-memory segment name")
    return name


class MappedReader:
    """A ring mapped read-only; ``ring`` reads it. Close it to unmap."""

    def __init__(self, name: str, layout: Layout, shm_dir: Path = SHM_DIR) -> None:
        path = shm_dir / check_segment_name(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise NotFound(f"no ring {name} (is the sensor publisher running?)") from None
        except PermissionError:
            raise PermissionDenied(f"not allowed to read the ring {name}") from None
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise NotFound(f"ring {name} is empty (its writer is setting it up)")
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        self.name = name
        try:
            self.ring = RingReader(self._map, layout)
        except BaseException:
            self._map.close()
            raise

    def close(self) -> None:
        self.ring.release()
        self._map.close()


class MappedWriter:
    """A ring this process created and writes (an app's external sensor)."""

    def __init__(self, name: str, layout: Layout, capacity: int, shm_dir: Path = SHM_DIR) -> None:
        path = shm_dir / check_segment_name(name)
        size = segment_size(layout, capacity)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            try:
                fd = os.open(path, flags, 0o640)
            except FileExistsError:
                # A leftover of ours from a crashed run (the name is per uid): retire, replace.
                _retire_and_unlink(path)
                fd = os.open(path, flags, 0o640)
        except OSError as exc:
            raise PermissionDenied(f"cannot create the ring {name}: {exc.strerror}") from None
        try:
            os.fchmod(fd, 0o640)  # whatever the umask: group may read, nobody else writes
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.name = name
        self.path = path
        self.ring = RingWriter(self._map, layout, capacity, pid=os.getpid())

    def close(self, unlink: bool = True) -> None:
        self.ring.retire()
        self.ring.release()
        self._map.close()
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _retire_and_unlink(path: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            size = os.fstat(fd).st_size
            if size:
                with mmap.mmap(fd, size) as m:
                    mark_retired(m)
        finally:
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def mark_retired(buf: mmap.mmap) -> bool:
    """Set the retired flag of whatever ring is in ``buf``; False if it is not a ring."""
    try:
        read_header(buf)
    except Exception:
        return False
    mv = memoryview(buf)
    try:
        word = mv[16:24].cast("Q")
        word[0] = word[0] | (1 << 32)
        word.release()
    finally:
        mv.release()
    return True


def segment_owner(name: str, shm_dir: Path = SHM_DIR) -> os.stat_result:
    st = os.stat(shm_dir / check_segment_name(name), follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidParams(f"{name} is not a shared-memory segment")
    return st
