"""The publisher's sensors and their shared-memory segments (created with posix_ipc).

Every segment the publisher owns is named ``<prefix>.<sensor>``, mode 0640, in the unit's group
(``kiki``): members may map it read-only, nobody but the publisher may write. At start, every
segment with the prefix is a leftover of an earlier run: it is marked retired (readers that
still map it notice and map the new one) and unlinked, so a crash never leaves a stale ring.
Anything else under the prefix that we may remove (a symlink planted there) is removed, never
followed.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import posix_ipc

from libkiki.errors import KikiError
from libkiki.peer import PeerCred
from libkiki.sensors import futex
from libkiki.sensors.layout import Layout
from libkiki.sensors.ring import WAKE_OFFSET, Batch, RingReader, RingWriter, segment_size
from libkiki.sensors.shm import SHM_DIR, MappedReader, mark_retired

log = logging.getLogger(__name__)

SEGMENT_MODE = 0o640


def clean_stale(prefix: str, shm_dir: Path = SHM_DIR) -> list[str]:
    """Retire and unlink what an earlier run (or anyone) left under the prefix; returns the
    names removed. A symlink or any other non-segment there is removed, never followed."""
    cleaned = []
    try:
        names = sorted(n for n in os.listdir(shm_dir) if n.startswith(prefix + "."))
    except OSError:
        return []
    for name in names:
        path = shm_dir / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot look at %s: %s", path, exc)
            continue
        # Only a segment of ours is mapped: one another user owns could be truncated under the
        # mapping (SIGBUS). Theirs, and whatever is not a regular file, is merely unlinked,
        # if we may.
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
            _retire(path)
        try:
            os.unlink(path)  # a symlink itself, not what it points to
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove %s: %s", path, exc)
            continue
        cleaned.append(name)
    return cleaned


def _retire(path: Path) -> None:
    """Mark the ring in ``path`` retired, so that its readers (and futex sleepers) move on."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        log.warning("cannot retire stale segment %s: %s", path.name, exc)
        return
    try:
        st = os.fstat(fd)  # the file we opened, whatever the name meant a moment ago
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_size:
            with mmap.mmap(fd, st.st_size) as m:
                mark_retired(m)
    except (OSError, ValueError) as exc:
        log.warning("cannot retire stale segment %s: %s", path.name, exc)
    finally:
        os.close(fd)


@dataclass(eq=False)
class Sensor:
    """A sensor: what ``sensors/list`` says about it, and its ring."""

    id: str
    kind: str
    unit: str
    layout: Layout
    rate_hz: float
    ring: str  # the segment's name in /dev/shm
    capacity: int
    reader: RingReader
    writer: RingWriter | None = None  # None for an external sensor (its app writes)
    owner: PeerCred | None = None
    _map: mmap.mmap | None = None
    _mapped: MappedReader | None = None
    _unlink: Any = None
    # The wake counter's address in our mapping, for FUTEX_WAKE (own rings only; None for an
    # external sensor's, which we never map).
    futex_address: int | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        id: str,
        kind: str,
        unit: str,
        layout: Layout,
        rate_hz: float,
        ring: str,
        cap: int,
        *,
        mode: int = SEGMENT_MODE,
        gid: int = -1,
    ) -> Sensor:
        size = segment_size(layout, cap)
        wanted = ring
        for attempt in range(4):
            try:
                mem = posix_ipc.SharedMemory("/" + ring, posix_ipc.O_CREX, mode=0o600, size=size)
                break
            except posix_ipc.ExistentialError:
                # The name is taken by something clean_stale could not remove (another
                # user's file in sticky /dev/shm): a fresh, unpredictable name instead, under
                # the same prefix (so the next start cleans it); readers learn the name from
                # sensors/list and check the file is ours.
                if attempt == 3:
                    raise KikiError(f"/dev/shm/{wanted} and fresh names are all taken") from None
                ring = f"{wanted}.{secrets.token_hex(6)}"
            except (posix_ipc.Error, OSError) as exc:
                raise KikiError(f"cannot create /dev/shm/{ring}: {exc}") from None
        if ring != wanted:
            log.warning("/dev/shm/%s is taken and cannot be removed; using %s", wanted, ring)
        try:
            if gid != -1:
                os.fchown(mem.fd, -1, gid)
            os.fchmod(mem.fd, mode)  # set after the group, and whatever the umask
            m = mmap.mmap(mem.fd, size)
        except BaseException:
            mem.close_fd()
            mem.unlink()
            raise
        mem.close_fd()
        writer = RingWriter(m, layout, cap, pid=os.getpid())
        sensor = cls(id, kind, unit, layout, rate_hz, ring, cap, RingReader(m, layout), writer)
        sensor._map = m
        sensor._unlink = mem.unlink
        if futex.SUPPORTED:
            sensor.futex_address = futex.writable_address(m, WAKE_OFFSET)
        return sensor

    @classmethod
    def external(
        cls,
        id: str,
        unit: str,
        layout: Layout,
        rate_hz: float,
        mapped: MappedReader,
        owner: PeerCred,
    ) -> Sensor:
        ring = mapped.ring
        sensor = cls(
            id, "external", unit, layout, rate_hz, mapped.name, ring.capacity, ring, owner=owner
        )
        sensor._mapped = mapped
        return sensor

    @property
    def write_index(self) -> int:
        return self.reader.write_index

    def latest(self, count: int) -> Batch:
        return self.reader.latest(count)

    def measured_rate(self) -> float:
        batch = self.reader.latest(min(64, self.capacity - 1))
        ts = batch.timestamps()
        if len(ts) < 2 or ts[-1] <= ts[0]:
            return 0.0
        return (len(ts) - 1) * 1e9 / (ts[-1] - ts[0])

    def view(self) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "unit": self.unit,
            "channels": len(self.layout.fields),
            "scale": self.layout.scale,
            "rateHz": round(self.rate_hz),
            "ring": self.ring,
            # Who must own the ring's file: readers refuse a segment anyone else made.
            "ringUid": os.geteuid() if self.owner is None else self.owner.uid,
            "capacity": self.capacity,
            "generation": f"{self.reader.generation:016x}",
            "writeIndex": self.write_index,
            "layout": self.layout.to_json(),
        }
        if self.owner is not None:
            view["owner"] = {"uid": self.owner.uid, "pid": self.owner.pid}
        return view

    def wake_futex(self) -> None:
        """Wake the readers asleep on this ring's wake counter (one system call for all)."""
        if self.futex_address is not None:
            if self.writer is not None:
                self.writer.bump_wake()
            futex.wake(self.futex_address)

    def close(self) -> None:
        """Retire the ring (readers map the next one) and unlink what this process owns."""
        if self.writer is not None:
            self.writer.retire()  # which moves the wake counter: sleepers look again
            self.writer.release()
            if self.futex_address is not None:
                futex.wake(self.futex_address)
                self.futex_address = None
        if self._mapped is not None:
            self._mapped.close()
            return
        self.reader.release()
        if self._map is not None:
            self._map.close()
        if self._unlink is not None:
            with contextlib.suppress(posix_ipc.ExistentialError):
                self._unlink()
