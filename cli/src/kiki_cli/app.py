"""``kiki app``: check an app directory against the published lexicons, build (publish) it to an
OSTree archive repository, and install, update, roll back and remove apps through the updater
(from a remote, or from a directory the updater publishes into its local archive)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from kiki_cli.schema import EXIT_ERROR, EXIT_FAILED, EXIT_OK, emit, problem, published
from libkiki.errors import KikiError, Unavailable
from libkiki.lexicon.install import check_app_dir


def register(sub: Any) -> None:
    p = sub.add_parser(
        "app",
        help="validate and install apps",
        description="Check that every type in an app's public surface is a published lexicon, "
        "build (publish) an app, and install apps through the updater (updater.sock), from an "
        "OSTree remote or from a directory, and update, roll back, remove and list them. Exit "
        "status 0 only on success.",
    )
    p.add_argument(
        "--socket",
        type=Path,
        help="the updater's socket (default: updater.sock in the runtime directory)",
    )
    cmds = p.add_subparsers(dest="app_command", metavar="SUBCOMMAND", required=True)
    for name, func, text in (
        ("validate", run_validate, "check an app directory (kiki-app.json and lexicons/)"),
        (
            "install",
            run_install,
            "install an app through the updater: from a directory (published into the "
            "updater's local archive, then installed or updated from it), or an app id from a "
            "remote (--remote)",
        ),
    ):
        cmd = cmds.add_parser(name, help=text, description=text)
        cmd.add_argument(
            "dir",
            type=Path,
            metavar="DIR",
            help="the app directory"
            + (" (with --remote: the app id)" if name == "install" else ""),
        )
        cmd.add_argument("--json", action="store_true", help="machine-readable output")
        cmd.add_argument(
            "--lexicons",
            action="append",
            type=Path,
            metavar="DIR",
            help="published lexicons (repeatable; default: $KIKI_LEXICON_PATH, else Kiki's "
            "and installed apps')",
        )
        cmd.add_argument(
            "--allow-breaking",
            action="store_true",
            help="accept incompatible changes to lexicons an earlier version installed",
        )
        cmd.set_defaults(func=func)
    install = cmds.choices["install"]
    install.add_argument(
        "--remote",
        metavar="NAME",
        help="a remote the updater's configuration "
        "names: install the app id through the updater (OSTree)",
    )
    install.add_argument("--channel", default=None, help="the channel (default: stable)")
    for name, func, text in (
        ("list", run_list, "installed apps, agents, their versions and rollback targets"),
        ("update", run_update, "update an app from its remote"),
        ("rollback", run_rollback, "put an app's previous commit back (no network)"),
        ("remove", run_remove, "remove an app (deployments, refs, data)"),
        ("history", run_history, "what was deployed for an app, newest first"),
    ):
        cmd = cmds.add_parser(name, help=text, description=text)
        if name != "list":
            cmd.add_argument("app", metavar="APP", help="the app id")
        cmd.add_argument("--json", action="store_true", help="machine-readable output")
        cmd.set_defaults(func=func)
    cmds.choices["update"].add_argument("--remote", metavar="NAME", help="another remote")
    cmds.choices["remove"].add_argument("--keep-data", action="store_true", help="keep data/")
    build = cmds.add_parser(
        "build",
        help="publish an app directory to an OSTree archive repository",
        description="Check an app directory as validate does, then commit it to an archive "
        "repository (created if missing) as the next release on app/<id>/<arch>/<channel>, "
        "with the static delta from the previous release and a fresh summary. Any static HTTP "
        "server can publish the repository.",
    )
    build.add_argument("dir", type=Path, metavar="DIR", help="the app directory")
    build.add_argument("--repo", type=Path, required=True, metavar="REPO", help="archive repo")
    build.add_argument("--channel", default="stable", help="default: stable")
    build.add_argument("--arch", default=None, help="default: this machine's")
    build.add_argument("--sign-key", type=Path, metavar="FILE", help="ed25519 secret key file")
    build.add_argument("--gpg-key", metavar="KEYID", help="sign commit and summary with GPG")
    build.add_argument("--gpg-homedir", type=Path, metavar="DIR", help="default: $GNUPGHOME")
    build.add_argument("--json", action="store_true", help="machine-readable output")
    build.add_argument(
        "--lexicons",
        action="append",
        type=Path,
        metavar="DIR",
        help="published lexicons (as for validate)",
    )
    build.add_argument("--allow-breaking", action="store_true", help="as for validate")
    build.set_defaults(func=run_build)


def run_validate(args: argparse.Namespace) -> int:
    registry, _ = published(args)
    checked = check_app_dir(args.dir, registry, allow_breaking=args.allow_breaking)
    manifest = checked.manifest
    ok_line = f"{manifest.id} {manifest.version}: every public type resolves" if manifest else ""
    emit(
        args,
        {
            "ok": checked.ok,
            "app": manifest.id if manifest else None,
            "problems": [problem(e) for e in checked.problems],
        },
        [f"refused: {e}" for e in checked.problems] or [ok_line],
    )
    return EXIT_OK if checked.ok else EXIT_FAILED


def _updater(args: argparse.Namespace, method: str, params: dict[str, Any]) -> Any:
    from kiki_cli.os import updater_call

    return updater_call(args.socket, method, params, progress=not args.json)


def _operation(args: argparse.Namespace, method: str, params: dict[str, Any]) -> int:
    from kiki_cli.common import fail
    from kiki_cli.os import operation_line, print_json

    try:
        answer = _updater(args, method, params)
    except KikiError as exc:
        return fail("app", exc)
    if args.json:
        print_json(answer)
    else:
        print(operation_line(answer["operation"]))
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    from kiki_cli.common import fail
    from kiki_cli.os import print_json

    try:
        listed = _updater(args, "list", {})
    except KikiError as exc:
        return fail("app", exc)
    if args.json:
        print_json({"apps": listed["apps"], "agents": listed.get("agents", [])})
        return EXIT_OK
    rows = [("APP", "VERSION", "COMMIT", "ROLLBACK", "ORIGIN")]
    for app in listed["apps"] + listed.get("agents", []):
        back = app.get("rollbackCommit", "")[:12] or "-"
        rows.append((app["appId"], app["version"], app["commit"][:12], back, app.get("origin", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[4])
    return EXIT_OK


def run_update(args: argparse.Namespace) -> int:
    params = {"appId": args.app, **({"remote": args.remote} if args.remote else {})}
    return _operation(args, "update", params)


def run_rollback(args: argparse.Namespace) -> int:
    return _operation(args, "rollback", {"appId": args.app})


def run_remove(args: argparse.Namespace) -> int:
    return _operation(args, "remove", {"appId": args.app, "keepData": args.keep_data})


def run_history(args: argparse.Namespace) -> int:
    from kiki_cli.common import fail
    from kiki_cli.os import print_json

    try:
        answer = _updater(args, "history", {"appId": args.app})
    except KikiError as exc:
        return fail("app", exc)
    if args.json:
        print_json(answer)
        return EXIT_OK
    for entry in answer["entries"]:
        print(
            f"{entry['at']}  {entry['action']:<16} {entry.get('version', ''):<12} "
            f"{entry['commit'][:12]}"
        )
    return EXIT_OK


def run_install(args: argparse.Namespace) -> int:
    """Every install goes through the updater: from a remote it names (``--remote``, the
    argument an app id), or from a directory, which the updater publishes into its local
    archive and installs from there (or updates, when the app is installed), with the same
    signature check, journal, install step, health gate and rollback."""
    if args.remote and (args.lexicons or args.allow_breaking):
        # the updater checks an OSTree install against what is installed on the device;
        # silently ignoring these would let the caller believe they applied
        print(
            "kiki app install: --lexicons and --allow-breaking apply to a directory install, "
            "not with --remote",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if args.remote:
        params = {"appId": str(args.dir), "remote": args.remote}
        if args.channel:
            params["channel"] = args.channel
        return _operation(args, "install", params)
    # Checked here first, as `kiki app build` does (against --lexicons when given): a refusal
    # costs no round trip; the updater's install step checks again against the device's.
    registry, _ = published(args)
    checked = check_app_dir(args.dir, registry, allow_breaking=args.allow_breaking)
    if not checked.ok or checked.manifest is None:
        emit(
            args,
            {"ok": False, "problems": [problem(e) for e in checked.problems]},
            [f"refused: {e}" for e in checked.problems] or [f"refused: {args.dir}"],
        )
        return EXIT_FAILED
    manifest = checked.manifest
    params = {"appId": manifest.id, "directory": str(args.dir.resolve())}
    if args.channel:
        params["channel"] = args.channel
    if args.allow_breaking:
        params["allowBreaking"] = True
    try:
        answer = call_with_directory(
            args.socket, "install", params, args.dir, progress=not args.json
        )
    except Unavailable as exc:  # no updater to install through: said as every command says it
        from kiki_cli.common import fail

        return fail("app", exc)
    except KikiError as exc:
        emit(args, {"ok": False, "problems": [problem(exc)]}, [f"refused: {exc}"])
        return EXIT_FAILED
    op = answer["operation"]
    commit = str(op.get("commit") or "")
    report = op.get("install")
    emit(
        args,
        {
            "ok": True,
            "app": manifest.id,
            "version": manifest.version,
            "commit": commit,
            "install": report,
            "operation": op,
        },
        [
            f"installed {manifest.id} {manifest.version} ({commit[:12]}) through the updater",
            *install_lines(report),
        ],
    )
    return EXIT_OK


def install_lines(report: dict[str, Any] | None) -> list[str]:
    """What the updater's install step installed (``defs#installReport``), for people; a field
    an updater's answer lacks is left out, never an error after the install has happened."""
    if not isinstance(report, dict) or not report:
        return []
    lines = []
    module, bindings = report.get("module"), report.get("bindings")
    if bindings and module:
        lines.append(f"bindings: {bindings} (import {module})")
    elif module:
        lines.append(f"bindings: import {module}")
    elif bindings:
        lines.append(f"bindings: {bindings}")
    stored, shared = report.get("componentsStored"), report.get("componentsShared")
    if isinstance(stored, list) and isinstance(shared, list):
        lines.append(
            f"components: {len(stored)} stored, {len(shared)} already installed by another app"
        )
    elif isinstance(stored, list):
        lines.append(f"components: {len(stored)} stored")
    return lines


def call_with_directory(
    socket_at: Path | None,
    method: str,
    params: dict[str, Any],
    directory: Path,
    *,
    progress: bool = False,
) -> Any:
    """``dev.kiki.update.<method>`` on the updater's socket, passing ``directory`` opened here,
    as the caller: the updater (root, in namespaces of its own) reaches it through that
    descriptor only, never by its path; it asks for it with ``dev.kiki.update.sendDirectory``.
    Used by ``install`` (a directory), ``exportAgent`` and ``importAgent``. With ``progress``,
    its phases (copy, build, verify, pull, install, swap, health) drawn on a terminal as a
    pull's are (``os.ProgressBar``)."""
    import asyncio
    import os
    import socket

    from kiki_cli.os import NSID, ProgressBar
    from libkiki.errors import InvalidParams
    from libkiki.paths import UPDATER_SOCKET, socket_path
    from libkiki.peer import peer_cred
    from libkiki.rpc import Connection, RequestContext

    path = socket_at or socket_path(UPDATER_SOCKET)
    try:
        dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidParams(f"{directory}: {exc.strerror or exc}") from None

    async def go() -> Any:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, os.fspath(path))
            peer = peer_cred(sock, app=False)
        except OSError as exc:
            sock.close()
            raise Unavailable(f"cannot connect to {path}: {exc.strerror or exc}") from exc

        async def send_directory(ctx: RequestContext) -> None:
            socket.send_fds(sock, [b"\n"], [dirfd])

        methods = {NSID + "sendDirectory": send_directory}
        async with Connection(sock, peer=peer, methods=methods) as conn:
            return await conn.request(
                NSID + method, params, timeout=float("inf"), on_progress=bar.on_progress
            )

    bar = ProgressBar(progress)
    try:
        return asyncio.run(go())
    finally:
        bar.close()
        os.close(dirfd)


def run_build(args: argparse.Namespace) -> int:
    registry, _ = published(args)
    checked = check_app_dir(args.dir, registry, allow_breaking=args.allow_breaking)
    if not checked.ok:
        emit(
            args,
            {"ok": False, "problems": [problem(e) for e in checked.problems]},
            [f"refused: {e}" for e in checked.problems],
        )
        return EXIT_FAILED
    # The updater's publishing code runs as its own process: kiki_cli imports no service.
    argv = [sys.executable, "-m", "kiki_updater.build", str(args.dir), "--repo", str(args.repo)]
    argv += ["--channel", args.channel]
    for flag, value in (
        ("--arch", args.arch),
        ("--sign-key", args.sign_key),
        ("--gpg-key", args.gpg_key),
        ("--gpg-homedir", args.gpg_homedir),
    ):
        if value is not None:
            argv += [flag, str(value)]
    run = subprocess.run(argv, capture_output=True, check=False)
    if run.returncode != 0:
        message = run.stderr.decode(errors="replace").strip() or f"exit {run.returncode}"
        emit(args, {"ok": False, "problems": [{"message": message}]}, [message])
        return EXIT_FAILED
    release = orjson.loads(run.stdout)
    delta = "delta from " + release["parent"][:12] if release["parent"] else "first release"
    emit(
        args,
        {"ok": True, **release},
        [
            f"published {release['appId']} {release['version']} as {release['commit'][:12]} on "
            f"{release['ref']} ({delta})"
        ],
    )
    return EXIT_OK
