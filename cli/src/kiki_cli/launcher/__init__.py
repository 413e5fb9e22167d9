"""``kiki up``'s machinery: the supervisor, its child processes and the demos it keeps running.

The ``kiki up`` command itself (its options) is :mod:`kiki_cli.up`.
"""
