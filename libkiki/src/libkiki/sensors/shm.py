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

from libkiki.errors import InvalidFrame, InvalidParams, NotFound, PermissionDenied
from libkiki.sensors import futex
from libkiki.sensors.futex import HeaderWord
from libkiki.sensors.layout import Layout
from libkiki.sensors.ring import (
    FLAG_RETIRED,
    HEADER_SIZE,
    WAKE_OFFSET,
    RingChanged,
    RingReader,
    RingWriter,
    read_header,
    retire_ring,
    segment_size,
)

SHM_DIR: Final = Path("/dev/shm")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


def check_segment_name(name: str) -> str:
    if not _SEGMENT.match(name):
        raise InvalidParams(f"{name!r} is not a valid shared-memory segment name")
    return name


class FdRingReader(RingReader):
    """A ring read through ``os.pread`` on its file descriptor, never mapped.

    For a segment whose size someone else controls (an app's external sensor): the owner can
    truncate it at any time, and touching a mapping past the new end is SIGBUS -- the death of
    the reading process. A ``pread`` past the end merely comes back short, which is an
    :class:`InvalidFrame` here. The seqlock protocol is the same: the write index is read
    before and after the records are copied.
    """

    def __init__(self, fd: int, layout: Layout, size: int) -> None:
        self._fd = fd
        self._size = size
        head = self._pread(HEADER_SIZE, 0)
        self._setup(read_header(head, size), layout)
        if segment_size(layout, self.capacity) > size:
            raise InvalidFrame("ring does not fit in its segment")

    def _pread(self, n: int, offset: int) -> bytes:
        try:
            data = os.pread(self._fd, n, offset)
        except OSError as exc:
            raise InvalidFrame(f"cannot read the ring: {exc.strerror}") from None
        if len(data) != n:
            raise InvalidFrame("the ring was truncated by its owner")
        return data

    def _word(self, offset: int) -> int:
        return int.from_bytes(self._pread(8, offset), "little")

    def _index(self) -> int:
        return self._word(40)

    @property
    def retired(self) -> bool:
        return bool((self._word(16) >> 32) & FLAG_RETIRED)

    def check(self) -> None:
        head = self._pread(HEADER_SIZE, 0)
        flags = int.from_bytes(head[16:24], "little") >> 32
        if int.from_bytes(head[32:40], "little") != self.generation or flags & FLAG_RETIRED:
            raise RingChanged()

    def _bytes(self, offset: int, n: int) -> bytes:
        return self._pread(n, offset)

    def release(self) -> None:
        pass  # the fd belongs to whoever opened it


class MappedReader:
    """A ring opened read-only; ``ring`` reads it. Close it to unmap.

    ``owner``: the uid that must own the segment (the publisher's, or an external sensor's
    app); anything else is refused. ``mapped=False`` reads through ``pread`` instead of a
    mapping (:class:`FdRingReader`): for a segment whose owner is not the publisher, who could
    truncate it under a mapping. ``futex=True`` also maps the header's first page for waiting
    on the wake counter (:attr:`word`, see :mod:`libkiki.sensors.futex`); mapped rings only.
    """

    def __init__(
        self,
        name: str,
        layout: Layout,
        shm_dir: Path = SHM_DIR,
        *,
        owner: int | None = None,
        mapped: bool = True,
        futex: bool = False,
    ) -> None:
        if futex and not mapped:
            raise InvalidParams("futex wake-ups need a mapped ring")
        path = shm_dir / check_segment_name(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise NotFound(f"no ring {name} (is the sensor publisher running?)") from None
        except PermissionError:
            raise PermissionDenied(f"not allowed to read the ring {name}") from None
        except OSError:  # ELOOP: a symlink; ENXIO, ...: not a file
            raise InvalidParams(f"{name} is not a shared-memory segment") from None
        self._map: mmap.mmap | None = None
        self._fd: int | None = None
        self.word: HeaderWord | None = None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidParams(f"{name} is not a shared-memory segment")
            if owner is not None and st.st_uid != owner:
                raise PermissionDenied(
                    f"ring {name} belongs to uid {st.st_uid}, not {owner}: not trusted"
                )
            if st.st_size == 0:
                raise NotFound(f"ring {name} is empty (its writer is setting it up)")
            if mapped:
                self._map = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ)
                self.ring = RingReader(self._map, layout)
                if futex:
                    self.word = HeaderWord(fd, WAKE_OFFSET)
            else:
                self._fd = fd
                self.ring = FdRingReader(fd, layout, st.st_size)
        except BaseException:
            if self.word is not None:
                self.word.close()
            if self._map is not None:
                self._map.close()
            os.close(fd)
            raise
        if self._fd is None:
            os.close(fd)
        self.name = name

    def close(self) -> None:
        self.ring.release()
        if self.word is not None:
            self.word.close()
            self.word = None
        if self._map is not None:
            self._map.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class MappedWriter:
    """A ring this process created and writes (an app's external sensor)."""

    def __init__(
        self,
        name: str,
        layout: Layout,
        capacity: int,
        shm_dir: Path = SHM_DIR,
        *,
        mode: int = 0o640,
        gid: int = -1,
    ) -> None:
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
            if gid != -1:
                # The group the publisher asked for (its readers'), if we are a member;
                # otherwise ours stays, and only its members may map the ring.
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, -1, gid)
            os.fchmod(fd, mode & 0o640)  # whatever the umask; nobody else ever writes
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
    """Retire whatever ring is in the writable mapping ``buf`` (:func:`~libkiki.sensors.ring.
    retire_ring`) and wake its futex sleepers, so that they look again and find the next ring;
    False if it is not a ring."""
    if not retire_ring(buf):
        return False
    if futex.SUPPORTED:
        with contextlib.suppress(OSError):
            futex.wake(futex.writable_address(buf, WAKE_OFFSET))
    return True


def segment_owner(name: str, shm_dir: Path = SHM_DIR) -> os.stat_result:
    st = os.stat(shm_dir / check_segment_name(name), follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidParams(f"{name} is not a shared-memory segment")
    return st
