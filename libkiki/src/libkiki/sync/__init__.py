"""What the session sync relay's clients, the CLI and the relay share: session tokens, and the
name of the relay's admin socket (in the runtime directory)."""

from typing import Final

ADMIN_SOCKET: Final = "sync-relay-admin.sock"
# The admin socket's FileDescriptorName= in units/kiki-sync-relay-admin.socket.
ADMIN_FDNAME: Final = "sync-admin"
