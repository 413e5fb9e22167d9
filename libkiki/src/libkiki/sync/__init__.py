"""What the session sync relay's clients, the CLI and the relay share: session tokens."""
