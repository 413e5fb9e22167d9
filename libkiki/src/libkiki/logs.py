"""Logging set-up for a service's ``__main__`` (libkiki itself never configures logging).

Under systemd (``$JOURNAL_STREAM`` set) each line carries its syslog priority as a ``<N>`` prefix,
which journald turns into the entry's priority, and no timestamp (the journal has its own).
Elsewhere lines get a timestamp and the level name.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        # Every physical line needs the prefix, or journald files a traceback's lines as info.
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def configure_logging(level: str | int | None = None) -> None:
    level = level or os.environ.get("KIKI_LOG_LEVEL", "INFO")
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())
    # Per-connection chatter from libraries: only their warnings reach the journal.
    for name in ("websockets", "dbus_fast"):
        logging.getLogger(name).setLevel(logging.WARNING)
