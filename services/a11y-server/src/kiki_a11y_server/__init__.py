"""kiki-a11y-server."""
