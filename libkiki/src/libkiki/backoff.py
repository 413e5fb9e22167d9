"""When ``kiki up`` starts a service again after it ended: a sans-I/O restart back-off.

The supervisor reports what happened (:meth:`RestartBackoff.started`,
:meth:`RestartBackoff.ready`, :meth:`RestartBackoff.exited`) with the time it read from its
clock; ``exited`` answers how long to wait before the next start. No clock is read here, so tests
drive it with made-up timestamps.

The rule:

- the first restart waits ``initial`` seconds, and each further one twice the last, up to
  ``maximum``: a service that keeps crashing costs less and less;
- a run that was ready for at least ``stable_after`` seconds before it ended proves the service
  healthy again: the wait returns to ``initial``, however long it had grown;
- a run that ends before it was ready that long (including one never ready) keeps growing it.

On a device systemd restarts after a fixed ``RestartSec=`` instead, and gives a unit up after
``StartLimitBurst=`` starts within ``StartLimitIntervalSec=`` (5 in 10 s by default) until an
operator resets it. ``kiki up`` never gives up (a developer fixing the code wants the next build
to start); the growing wait is what keeps a crash loop cheap, and ``stable_after`` defaults to the
same 10 s as ``StartLimitIntervalSec=``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_INITIAL = 0.5
DEFAULT_MAXIMUM = 30.0
DEFAULT_STABLE_AFTER = 10.0


@dataclass(slots=True)
class RestartBackoff:
    initial: float = DEFAULT_INITIAL
    maximum: float = DEFAULT_MAXIMUM
    stable_after: float = DEFAULT_STABLE_AFTER
    _next: float = field(init=False)
    _ready_since: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(
                f"back-off needs 0 < initial <= maximum (got {self.initial}, {self.maximum})"
            )
        if self.stable_after < 0:
            raise ValueError(f"stable_after must not be negative (got {self.stable_after})")
        self._next = self.initial

    @property
    def next_delay(self) -> float:
        """The wait the next failure would get, were it not preceded by a healthy run."""
        return self._next

    def started(self) -> None:
        """A new run of the process began; it is not ready yet."""
        self._ready_since = None

    def ready(self, now: float) -> None:
        """The run reported readiness (``READY=1``; a process without a readiness protocol is
        ready once started, like systemd's ``Type=simple``)."""
        if self._ready_since is None:
            self._ready_since = now

    def exited(self, now: float) -> float:
        """The run ended (for any reason); returns the seconds to wait before starting again."""
        if self._ready_since is not None and now - self._ready_since >= self.stable_after:
            self._next = self.initial
        self._ready_since = None
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay
