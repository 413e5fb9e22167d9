"""``python -m kiki_updater.build``: publish an app directory to an archive repository.

What ``kiki app build`` runs (the command line reaches the updater's code as a process, never by
import: the layering keeps applications off the services' modules). It prints one JSON object,
the release, on stdout; a refusal is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from pathlib import Path

import orjson

from kiki_updater.gio import lib
from kiki_updater.publish import publish
from kiki_updater.signing import gpg_sign_commit, gpg_sign_summary, sign_commit
from kiki_updater.store import ARCH
from libkiki.errors import KikiError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kiki_updater.build", description=__doc__)
    p.add_argument("dir", type=Path)
    p.add_argument("--repo", type=Path, required=True, help="the archive repository")
    p.add_argument("--channel", default="stable")
    p.add_argument("--kind", choices=("app", "agent"), default="app")
    p.add_argument("--arch", default=None)
    p.add_argument("--sign-key", type=Path, help="file holding an ed25519 secret key (base64)")
    p.add_argument("--gpg-key", help="GPG key id to sign the commit and the summary with")
    p.add_argument("--gpg-homedir", type=Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    secret = args.sign_key.read_text().strip() if args.sign_key else None
    homedir = args.gpg_homedir or Path(os.environ.get("GNUPGHOME", Path.home() / ".gnupg"))

    def sign(repo: object, commit: str) -> None:
        if secret:
            sign_commit(repo, commit, secret)
        if args.gpg_key:
            gpg_sign_commit(repo, commit, args.gpg_key, homedir)

    def sign_summary(repo: object) -> None:
        gpg_sign_summary(repo, args.gpg_key, homedir)

    try:
        release = publish(
            args.dir,
            args.repo,
            kind=args.kind,
            channel=args.channel,
            sign=sign if secret or args.gpg_key else None,
            sign_summary=sign_summary if args.gpg_key else None,
            arch=args.arch or ARCH,
        )
    except KikiError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except lib().GLib.Error as exc:
        print(f"failed: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    out = asdict(release)
    out["appId"] = out.pop("app_id")
    sys.stdout.buffer.write(orjson.dumps(out) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
