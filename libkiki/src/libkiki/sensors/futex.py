"""Futex wake-ups through a ring's wake counter, for readers that block in a thread.

A ring's header holds a 32-bit wake counter (offset 52, see :mod:`libkiki.sensors.ring`), a
futex word. A reader reads the counter, then the ring; if there is nothing new it sleeps in
``FUTEX_WAIT(counter, the value it read)``: the kernel puts it to sleep only if the counter
still has that value, so a write (or the ring's retirement) after its look is never slept
through. The publisher adds one to the counter and calls ``FUTEX_WAKE`` after the writes that
its futex subscribers want to hear about -- one system call, however many readers sleep -- and
when it retires the ring.

The futex is a shared one (no ``FUTEX_PRIVATE_FLAG``): the kernel keys it by the page of
``/dev/shm`` it lives in, so the writer's read-write mapping and a reader's read-only one of
the same page meet. Waiting needs read access only (Linux allows ``FUTEX_WAIT`` on a read-only
mapping since 3.5), so readers still cannot write the ring.

CPython has no futex call; ``syscall(2)`` through ctypes releases the GIL while it blocks.
A reader maps the ring's first page a second time, read-only, with ``mmap(2)`` from libc --
Python's own ``mmap`` object does not give out the address of a read-only mapping.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import platform
import sys
from typing import Final

from libkiki.errors import KikiError

_FUTEX_WAIT: Final = 0
_FUTEX_WAKE: Final = 1
_WAKE_ALL: Final = 0x7FFFFFFF
_SYS_FUTEX: Final = {"x86_64": 202, "aarch64": 98}.get(platform.machine())
_PROT_READ: Final = 1
_MAP_SHARED: Final = 1
_MAP_FAILED: Final = ctypes.c_void_p(-1).value

SUPPORTED: Final = sys.platform == "linux" and _SYS_FUTEX is not None


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


if SUPPORTED:
    _libc = ctypes.CDLL(None, use_errno=True)
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long
    _mmap = _libc.mmap
    _mmap.restype = ctypes.c_void_p
    _mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    _munmap = _libc.munmap
    _munmap.restype = ctypes.c_int
    _munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def _require() -> None:
    if not SUPPORTED:
        raise KikiError(f"futex wake-ups need Linux on x86-64 or aarch64, not {platform.machine()}")


def wake(address: int) -> int:
    """Wake every waiter on the futex word at ``address``; returns how many were woken."""
    _require()
    woken = int(
        _syscall(_SYS_FUTEX, ctypes.c_void_p(address), _FUTEX_WAKE, _WAKE_ALL, None, None, 0)
    )
    if woken < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"FUTEX_WAKE: {os.strerror(err)}")
    return woken


def wait(address: int, expected: int, timeout: float | None) -> bool:
    """Sleep while the word at ``address`` is ``expected`` (its low 32 bits), at most
    ``timeout`` seconds (None: no limit).

    True when woken, or when the word had already changed (look again); False on timeout.
    A signal also returns True: the caller re-checks, as it must after any wake-up."""
    _require()
    spec = None
    if timeout is not None:
        timeout = max(0.0, timeout)
        spec = ctypes.byref(_Timespec(int(timeout), int((timeout % 1) * 1e9)))
    result = _syscall(
        _SYS_FUTEX,
        ctypes.c_void_p(address),
        _FUTEX_WAIT,
        ctypes.c_uint32(expected & 0xFFFFFFFF),
        spec,
        None,
        0,
    )
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EAGAIN, errno.EINTR):
        return True
    if err == errno.ETIMEDOUT:
        return False
    raise OSError(err, f"FUTEX_WAIT: {os.strerror(err)}")


def writable_address(buf: mmap.mmap, offset: int) -> int:
    """The address of ``offset`` in a writable mapping (the writer's own).

    Valid while the mapping is; the ctypes view that finds it is dropped at once, so the
    mapping can still be closed."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf)) + offset


class HeaderWord:
    """A read-only mapping of a ring's first page, for waiting on the word at ``offset``.

    ``fd`` may be closed once this is made. :meth:`close` unmaps it."""

    def __init__(self, fd: int, offset: int) -> None:
        _require()
        self._size = mmap.PAGESIZE
        base = _mmap(None, self._size, _PROT_READ, _MAP_SHARED, fd, 0)
        if base is None or base == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of the ring's header: {os.strerror(err)}")
        self._base: int | None = base
        self.address = base + offset

    def wait(self, expected: int, timeout: float | None) -> bool:
        if self._base is None:
            raise KikiError("the ring's header is no longer mapped")
        return wait(self.address, expected, timeout)

    def close(self) -> None:
        if self._base is not None:
            _munmap(self._base, self._size)
            self._base = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: libc may be gone
            self.close()
