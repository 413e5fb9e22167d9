"""Reading a lexicon or manifest file: what is refused before anything is read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from libkiki.errors import LexiconError
from libkiki.lexicon.files import read_json_file

pytestmark = pytest.mark.unit


def test_a_regular_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"lexicon": 1}')
    assert read_json_file(path) == {"lexicon": 1}


def test_a_symbolic_link_is_refused_not_followed(tmp_path: Path) -> None:
    # The updater reads an app's files as root: a link to a file the app's author cannot read
    # must not be read for them.
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": "root only"}')
    link = tmp_path / "lexicon.json"
    link.symlink_to(secret)
    with pytest.raises(LexiconError, match="is a symbolic link") as caught:
        read_json_file(link)
    assert "root only" not in str(caught.value)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "manifest.json"
    os.mkfifo(fifo)
    with pytest.raises(LexiconError, match="is not a regular file"):
        read_json_file(fifo)


def test_a_file_over_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_text("[" + "0," * 600 + "0]")
    with pytest.raises(LexiconError, match="larger than"):
        read_json_file(path, limit=1000)
