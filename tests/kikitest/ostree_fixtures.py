"""OSTree test material: app trees, commits in real repositories, a static HTTP server.

Everything here builds real repositories with libostree (through the updater's lazy loader);
nothing stands in for OSTree. An updater operation (``Operations``, an agent's export or import)
is run with :func:`in_worker`, as the server runs it: the operations refuse a thread without a
GLib main context of its own.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import orjson

from kiki_updater.gio import own_context
from kiki_updater.publish import Release, publish
from kiki_updater.signing import sign_commit

__all__ = [
    "GpgKey",
    "Served",
    "assert_whole",
    "bootc_stand_in",
    "gpg_key",
    "in_worker",
    "make_app_tree",
    "publish_versions",
    "serve_dir",
    "stop_gpg_agent",
    "traversable_dir",
    "write_manifest",
]

P = ParamSpec("P")
T = TypeVar("T")


def in_worker(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` run as the updater's server runs an operation: in a worker
    thread, inside a GLib main context of that thread's own (``gio.own_context``); its result,
    or its exception raised here."""

    def run() -> T:
        with own_context():
            return fn(*args, **kwargs)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ostree-operation") as pool:
        return pool.submit(run).result()


@contextmanager
def traversable_dir() -> Iterator[Path]:
    """A fresh directory any user may search (0755, under /var/tmp): where a device's root
    goes when a health command runs as an app's own uid, which reaches the app's ``data/`` by
    its absolute path (pytest's ``tmp_path`` is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="kiki-updater-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_manifest(tree: Path, app_id: str, version: str, **extra: Any) -> None:
    manifest = {"id": app_id, "version": version, **extra}
    (tree / "kiki-app.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))


def make_app_tree(
    tree: Path, app_id: str, version: str, *, files: int = 20, size: int = 512, salt: str = ""
) -> Path:
    """An app directory of ``files`` files of ``size`` bytes in a few subdirectories, with a
    manifest; ``salt`` changes every file's content (a different build)."""
    tree.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        sub = tree / "lib" / f"m{i % 16:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        seed = f"{salt}{i}".encode()
        block = (seed * (size // len(seed) + 1))[:size]
        (sub / f"f{i:05d}.py").write_bytes(block)
    (tree / "bin").mkdir(exist_ok=True)
    run = tree / "bin" / "run"
    run.write_text("#!/bin/sh\necho running\n")
    run.chmod(0o755)
    write_manifest(tree, app_id, version)
    return tree


@dataclass
class Served:
    """What a test server sent: body bytes, and the paths asked for (with their status)."""

    bytes: int = 0
    paths: list[tuple[str, int]] = field(default_factory=list)
    # Bytes per second to pace the bodies to (0: as fast as loopback goes).
    rate: float = 0.0

    def reset(self) -> None:
        self.bytes = 0
        self.paths.clear()


class _Handler(http.server.SimpleHTTPRequestHandler):
    served: Served

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_head(self) -> Any:
        # Last-Modified has one-second resolution: a summary rewritten within the second it
        # was fetched would be answered 304 and the client would keep the stale one.
        del self.headers["If-Modified-Since"]
        return super().send_head()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.served.paths.append((self.path, int(code) if str(code).isdigit() else 0))

    def copyfile(self, source: Any, outputfile: Any) -> None:
        # Counted (and paced, for a slow link) as it is sent.
        start = time.monotonic()
        sent = 0
        while chunk := source.read(1 << 14):
            outputfile.write(chunk)
            sent += len(chunk)
            self.served.bytes += len(chunk)
            if self.served.rate:
                ahead = sent / self.served.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)


@contextmanager
def serve_dir(root: Path, rate: float = 0.0) -> Iterator[tuple[str, Served]]:
    """A static HTTP server on 127.0.0.1 publishing ``root`` (in a thread): its URL and what it
    sent; ``rate`` paces the bodies (bytes per second)."""
    counter = Served(rate=rate)
    handler = type("Handler", (_Handler,), {"served": counter})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=os.fspath(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counter
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass(frozen=True)
class GpgKey:
    homedir: Path
    fingerprint: str
    keyring: Path  # the public key, exported: what a device's remote imports


def gpg_key(where: Path, name: str = "Kiki Test") -> GpgKey:
    """A fresh signing key (no passphrase) in its own GNUPGHOME, with its public key exported."""
    home = where / "gnupg"
    home.mkdir(mode=0o700, parents=True)
    env = {**os.environ, "GNUPGHOME": str(home)}

    def run(argv: list[str]) -> bytes:
        return subprocess.run(argv, env=env, check=True, capture_output=True, timeout=60).stdout

    run(
        [
            "gpg",
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            f"{name} <k@kiki.invalid>",
            "ed25519",
            "sign",
            "never",
        ]
    )
    listing = run(["gpg", "--list-keys", "--with-colons"]).decode()
    fingerprint = next(
        line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr")
    )
    keyring = where / "trusted.gpg"
    keyring.write_bytes(run(["gpg", "--export", fingerprint]))
    return GpgKey(home, fingerprint, keyring)


def stop_gpg_agent(key: GpgKey) -> None:
    subprocess.run(
        ["gpgconf", "--kill", "all"],
        env={**os.environ, "GNUPGHOME": str(key.homedir)},
        check=False,
        capture_output=True,
        timeout=30,
    )


def assert_whole(store: Any, kind: str, ident: str, commit: str, scratch: Path) -> None:
    """The deployment ``current`` names is ``commit``, and every file of it is exactly the
    commit's (compared with a fresh checkout, byte for byte), with nothing more."""
    from kiki_updater.gio import lib

    home = store.home(kind, ident)
    assert os.readlink(home / "current") == f"deploy/{commit}"
    fresh = scratch / f"fresh-{commit[:12]}"
    shutil.rmtree(fresh, ignore_errors=True)
    scratch.mkdir(parents=True, exist_ok=True)
    options = lib().OSTree.RepoCheckoutAtOptions()
    options.mode = 1
    options.force_copy = True  # its own files, not links to the objects the deployment shares
    fd = os.open(scratch, os.O_RDONLY)
    try:
        store.repo.checkout_at(options, fd, fresh.name, commit, None)
    finally:
        os.close(fd)
    deployed = home / "deploy" / commit

    def listing(root: Path) -> dict[str, bytes]:
        out = {}
        for path in sorted(root.rglob("*")):
            rel = str(path.relative_to(root))
            out[rel] = (
                os.readlink(path).encode()
                if path.is_symlink()
                else (path.read_bytes() if path.is_file() else b"<dir>")
            )
        return out

    assert listing(deployed) == listing(fresh)


def publish_versions(
    repo: Path,
    tmp: Path,
    app_id: str,
    versions: list[str],
    *,
    secret: str | None,
    files: int = 20,
    salt: str = "",
    extra: dict[str, bytes] | None = None,
) -> list[Release]:
    """Build and publish each version of a small app (each changes one file) to ``repo``;
    ``salt`` changes every file, ``extra`` adds files (name -> content)."""
    releases = []
    tree = make_app_tree(tmp / f"tree-{app_id}", app_id, versions[0], files=files, salt=salt)
    for name, content in (extra or {}).items():
        (tree / name).write_bytes(content)
    for version in versions:
        write_manifest(tree, app_id, version)
        (tree / "lib" / "m00" / "f00000.py").write_text(f"version {version}\n")
        sign = (lambda r, c: sign_commit(r, c, secret)) if secret else None
        releases.append(publish(tree, repo, sign=sign))
    return releases


BOOTC_STAND_IN = """#!/usr/bin/python3
# A stand-in bootc: prints one of bootc's real status documents (YAML from the bootc project,
# as JSON when --format=json is asked, as bootc would print it), records every command line.
import json, sys
import yaml

DOC, LOG, EXIT = {doc!r}, {log!r}, {exit}

class Loader(yaml.SafeLoader):
    pass

# bootc's versions and timestamps are strings: "20231230.1" must not come back as a float,
# nor "2023-10-14T19:22:15.42Z" as a datetime printed another way.
KEPT_AS_TEXT = ("tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")
Loader.yaml_implicit_resolvers = {{
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in KEPT_AS_TEXT]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}}

# bootc's YAML writes serde's externally tagged enums as tags: !ostreeRemote "fedora"
Loader.add_multi_constructor("!", lambda loader, tag, node: {{tag: loader.construct_scalar(node)}})

with open(LOG, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:2] == ["status"]:
    with open(DOC) as f:
        doc = yaml.load(f, Loader=Loader)
    print(json.dumps(doc))
    sys.exit(0)
print("stand-in bootc: " + " ".join(sys.argv[1:]))
if EXIT:
    print("error: stand-in bootc told to fail", file=sys.stderr)
sys.exit(EXIT)
"""


def bootc_stand_in(where: Path, document: str, *, exit: int = 0) -> tuple[Path, Path]:
    """A ``bootc`` for tests: prints ``document`` (a file of /work/shared/testdata/bootc-status/)
    and records its arguments, one JSON list a line, in the returned log."""
    where.mkdir(parents=True, exist_ok=True)
    log = where / "bootc-args.log"
    script = where / "bootc"
    doc = BOOTC_TESTDATA / document
    script.write_text(BOOTC_STAND_IN.format(doc=str(doc), log=str(log), exit=exit))
    script.chmod(0o755)
    return script, log


BOOTC_TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "bootc-status"
