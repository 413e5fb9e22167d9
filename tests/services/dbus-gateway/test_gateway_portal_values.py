"""Portal answers as the lexicon's values, and the Request path a caller subscribes to before
it calls."""

from __future__ import annotations

import pytest
from dbus_fast import Variant

from kiki_dbus_gateway.portal import (
    appearance,
    network_status,
    new_token,
    request_path,
    setting_changed,
)

pytestmark = pytest.mark.unit


def test_the_request_path_is_predicted_from_the_sender_and_token() -> None:
    token = new_token()
    assert token.replace("_", "").isalnum()
    assert new_token() != token
    assert request_path(":1.42", "t1") == "/org/freedesktop/portal/desktop/request/1_42/t1"


def test_network_status_with_wrong_types_falls_back() -> None:
    good = {
        "available": Variant("b", True),
        "metered": Variant("b", True),
        "connectivity": Variant("u", 4),
    }
    assert network_status(good) == {"available": True, "metered": True, "connectivity": "full"}
    bad = {"available": Variant("s", "yes"), "connectivity": Variant("u", 9)}
    assert network_status(bad) == {"available": False, "metered": False, "connectivity": "local"}


def test_appearance_reads_what_the_backend_set() -> None:
    found = {
        "org.freedesktop.appearance": {
            "color-scheme": Variant("u", 1),
            "contrast": Variant("u", 1),
            "accent-color": Variant("(ddd)", [1.0, 0.5, 0.0]),
        }
    }
    assert appearance(found) == {
        "colorScheme": "dark",
        "contrast": "high",
        "accentColor": "#ff8000",
    }
    assert appearance({}) == {}
    odd = {"org.freedesktop.appearance": {"accent-color": Variant("(ddd)", [2.0, 0.0, 0.0])}}
    assert appearance(odd) == {}


def test_setting_changed_events() -> None:
    event = setting_changed(["org.freedesktop.appearance", "color-scheme", Variant("u", 2)])
    assert event == {
        "$type": "dev.kiki.portal.subscribeSettings#settingChanged",
        "namespace": "org.freedesktop.appearance",
        "key": "color-scheme",
        "valueJson": "2",
    }
    assert setting_changed([1, 2]) is None
