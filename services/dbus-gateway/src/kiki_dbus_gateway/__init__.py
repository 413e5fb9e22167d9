"""kiki-dbus-gateway."""
