"""Kiki's accessibility tree: wire codec, client, publisher, text rendering, demo app."""
