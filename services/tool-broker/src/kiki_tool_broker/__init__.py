"""kiki-tool-broker."""
