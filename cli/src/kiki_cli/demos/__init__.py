"""The demo apps ``kiki up`` starts: a tool provider and an app with an accessibility tree.

Each runs by itself too (``python -m kiki_cli.demos.<name>``); tests drive them as peers.
"""
