"""The updater's settings: ``/etc/kiki/updater.toml`` or ``KIKI_UPDATER_<FIELD>``.

Only the limits every service has, so far: the update operations (OSTree pulls, bootc) will
add theirs here.
"""

from __future__ import annotations

from libkiki.config import ServiceConfig


class UpdaterConfig(ServiceConfig):
    pass
