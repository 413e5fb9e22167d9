"""The systemd units agree with the services' declarations in ``libkiki.constellation``.

Unit files cannot import the table, so this test reads them (no systemd needed) and compares:
which units exist and where (system or user), ``ExecStart=``, the socket's ``ListenStream=``
and ``FileDescriptorName=``, the service's ties to its socket, what ``kiki.target`` and the
presets enable, the rows of ``units/README.md``; and, beside the units, that each declared
command is an installed program and each declared service a package under ``services/``. The
checker is also run on copies of ``units/`` with one mismatch planted, each of which it must
report, so that it is known to be able to fail.
"""

from __future__ import annotations

import fnmatch
import shutil
from collections import defaultdict
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from kikitest import REPO
from libkiki.constellation import SERVICES, ServiceSpec
from libkiki.sync import ADMIN_FDNAME, ADMIN_SOCKET

pytestmark = pytest.mark.unit

UNITS = REPO / "units"
# Where the image installs the programs (image/install.sh) and where the device's sockets live.
VENV_BIN = "/usr/lib/kiki/venv/bin"
RUNTIME_DIR = "/run/kiki"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """A unit file as section -> key -> values (a key may repeat); comments and blank lines
    skipped, backslash continuations joined, as systemd reads them."""
    sections: Unit = defaultdict(lambda: defaultdict(list))
    section = ""
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise AssertionError(f"{path}: not a key=value line: {line!r}")
        sections[section][key.strip()].append(value.strip())
    return sections


def words(unit: Unit, section: str, key: str) -> list[str]:
    """Every space-separated value of ``key`` (Wants=a b, Wants=c: a, b, c)."""
    return [word for value in unit[section][key] for word in value.split()]


def listen_stream(spec: ServiceSpec) -> str:
    if spec.socket_file is not None:
        return f"{RUNTIME_DIR}/{spec.socket_file}"
    assert spec.address is not None
    host, port = spec.address
    return f"{host}:{port}"


def disagreements(units: Path, services: Sequence[ServiceSpec]) -> list[str]:
    """Every way the unit files under ``units`` differ from ``services``; empty when they agree."""
    found: list[str] = []
    declared: set[Path] = set()
    target = parse_unit(units / "kiki.target")
    wanted_sockets = set(words(target, "Unit", "Wants"))
    for spec in services:
        where = units / "user" if spec.session_bus else units
        service_path = where / f"{spec.unit}.service"
        socket_path = where / f"{spec.unit}.socket"
        declared.add(service_path)
        if not service_path.exists():
            found.append(f"{spec.name}: no {service_path.relative_to(units)}")
            continue
        service = parse_unit(service_path)
        exec_start = service["Service"]["ExecStart"]
        expected = f"{VENV_BIN}/{spec.command}"
        if [value.split()[0] for value in exec_start] != [expected]:
            found.append(f"{spec.name}: ExecStart={exec_start}, not {expected}")
        runtime = [
            value.removeprefix("KIKI_RUNTIME_DIR=")
            for value in words(service, "Service", "Environment")
            if value.startswith("KIKI_RUNTIME_DIR=")
        ]
        if spec.fdname is None:
            if socket_path.exists():
                found.append(f"{spec.name}: declares no socket, yet {socket_path.name} exists")
            continue
        declared.add(socket_path)
        if spec.session_bus:
            found.append(f"{spec.name}: a user unit with a socket is not supported here")
        if not socket_path.exists():
            found.append(f"{spec.name}: no {socket_path.relative_to(units)}")
            continue
        socket_unit = parse_unit(socket_path)
        listen = socket_unit["Socket"]["ListenStream"]
        if listen != [listen_stream(spec)]:
            found.append(f"{spec.name}: ListenStream={listen}, not {listen_stream(spec)}")
        if spec.socket_file is not None and runtime != [RUNTIME_DIR]:
            found.append(f"{spec.name}: Environment=KIKI_RUNTIME_DIR={runtime}, not {RUNTIME_DIR}")
        fdname = socket_unit["Socket"]["FileDescriptorName"]
        if fdname != [spec.fdname]:
            found.append(f"{spec.name}: FileDescriptorName={fdname}, not {spec.fdname}")
        paired = socket_unit["Socket"]["Service"]
        if paired and paired != [service_path.name]:
            found.append(f"{spec.name}: {socket_path.name} starts {paired}")
        for section, key in (("Unit", "Requires"), ("Unit", "After"), ("Install", "Also")):
            if socket_path.name not in words(service, section, key):
                found.append(f"{spec.name}: {service_path.name} has no {key}={socket_path.name}")
        if socket_path.name not in wanted_sockets:
            found.append(f"{spec.name}: kiki.target does not want {socket_path.name}")
        wanted_sockets.discard(socket_path.name)
    found.extend(_extra_socket_disagreements(units, services, declared))
    found.extend(_helper_disagreements(units, declared))
    for path in sorted([*units.glob("kiki-*.s*"), *units.glob("user/kiki-*.s*")]):
        if path.suffix in (".service", ".socket") and path not in declared:
            found.append(f"{path.relative_to(units)}: no service declares it")
    if wanted_sockets:
        found.append(f"kiki.target wants undeclared units: {sorted(wanted_sockets)}")
    found.extend(_preset_disagreements(units, services))
    found.extend(_readme_disagreements(units, services))
    return found


# Sockets a service takes besides the one its declaration names: service, socket unit,
# ListenStream=, FileDescriptorName=, SocketMode=.
EXTRA_SOCKETS = (
    (
        "sync-relay",
        "kiki-sync-relay-admin.socket",
        f"{RUNTIME_DIR}/{ADMIN_SOCKET}",
        ADMIN_FDNAME,
        "0600",
    ),
)


def _extra_socket_disagreements(
    units: Path, services: Sequence[ServiceSpec], declared: set[Path]
) -> list[str]:
    found = []
    names = {spec.name: spec for spec in services}
    for name, unit, listen, fdname, mode in EXTRA_SOCKETS:
        if name not in names:
            continue
        path = units / unit
        declared.add(path)
        if not path.exists():
            found.append(f"{name}: no {unit}")
            continue
        socket_unit = parse_unit(path)["Socket"]
        service_name = f"{names[name].unit}.service"
        for key, expected in (
            ("ListenStream", listen),
            ("FileDescriptorName", fdname),
            ("Service", service_name),
            ("SocketMode", mode),
        ):
            if socket_unit[key] != [expected]:
                found.append(f"{name}: {unit} {key}={socket_unit[key]}, not {expected}")
        service_path = units / service_name
        if service_path.exists():
            service = parse_unit(service_path)
            for section, key in (("Unit", "Requires"), ("Unit", "After"), ("Install", "Also")):
                if unit not in words(service, section, key):
                    found.append(f"{name}: {service_name} has no {key}={unit}")
    return found


# Units of programs that are not services of their own (no declaration, no socket): a helper
# packaged with a service. Unit (under units/), command, its console script's target.
HELPER_UNITS = (
    ("user/kiki-atspi-bridge.service", "kiki-atspi-bridge", "kiki_a11y_server.atspi.main:main"),
)


def _helper_disagreements(units: Path, declared: set[Path]) -> list[str]:
    found = []
    user_preset = (units / "user" / "kiki.preset").read_text().split("\n")
    rows = [line for line in (units / "README.md").read_text().splitlines() if line.startswith("|")]
    for relative, command, _ in HELPER_UNITS:
        path = units / relative
        declared.add(path)
        if not path.exists():
            found.append(f"no {relative}")
            continue
        exec_start = parse_unit(path)["Service"]["ExecStart"]
        if [value.split()[0] for value in exec_start] != [f"{VENV_BIN}/{command}"]:
            found.append(f"{relative}: ExecStart={exec_start}, not {VENV_BIN}/{command}")
        if relative.startswith("user/") and f"enable {path.name}" not in user_preset:
            found.append(f"user/kiki.preset does not enable {path.name}")
        if not any(f"`{relative}`" in row for row in rows):
            found.append(f"README.md: no row for {relative}")
    return found


def _preset_disagreements(units: Path, services: Sequence[ServiceSpec]) -> list[str]:
    found = []
    system = (units / "kiki.preset").read_text().split("\n")
    user = (units / "user" / "kiki.preset").read_text().split("\n")
    sockets = any(spec.fdname and not spec.session_bus for spec in services)
    if sockets and "enable kiki-*.socket" not in system:
        found.append("kiki.preset does not enable kiki-*.socket")
    enabled = [line.split()[1] for line in system if line.startswith("enable ")]
    for spec in services:
        if spec.session_bus and f"enable {spec.unit}.service" not in user:
            found.append(f"user/kiki.preset does not enable {spec.unit}.service")
        # A socket-activated service runs on its first connection by default: the preset
        # enables its socket only (its [Install] WantedBy= is for an operator who enables it).
        service = f"{spec.unit}.service"
        if spec.fdname and not spec.session_bus:
            for pattern in enabled:
                if fnmatch.fnmatchcase(service, pattern):
                    found.append(
                        f"kiki.preset enables {service} (by {pattern}): it would run before "
                        "its first connection"
                    )
    return found


def _readme_disagreements(units: Path, services: Sequence[ServiceSpec]) -> list[str]:
    """The README's table of units names each socket's address and FileDescriptorName=."""
    found = []
    rows = [line for line in (units / "README.md").read_text().splitlines() if line.startswith("|")]
    for spec in services:
        name = f"user/{spec.unit}.service" if spec.session_bus else f"{spec.unit}.socket"
        row = next((r for r in rows if f"`{name}`" in r), None)
        if row is None:
            found.append(f"README.md: no row for {name}")
            continue
        expected = [f"`{listen_stream(spec)}`", f"`{spec.fdname}`"] if spec.fdname else []
        if spec.bus_name is not None:
            expected.append(f"`{spec.bus_name}`")
        # "`FileDescriptorName=tools`" and "`tools`" both name the fdname.
        missing = [text for text in expected if text not in row.replace("FileDescriptorName=", "")]
        if missing:
            found.append(f"README.md: the row of {name} lacks {', '.join(missing)}")
    return found


def test_the_units_agree_with_the_declarations() -> None:
    assert disagreements(UNITS, SERVICES) == []


def test_every_declared_command_is_an_installed_program_of_its_package() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    for spec in SERVICES:
        package = "kiki_" + spec.name.replace("-", "_")
        assert scripts.get(spec.command) == f"{package}.__main__:main", spec.name
        assert (REPO / "services" / spec.name / "src" / package).is_dir(), spec.name


def test_every_helper_unit_runs_an_installed_program() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    for _, command, target in HELPER_UNITS:
        assert scripts.get(command) == target, command


def test_every_service_package_is_declared() -> None:
    packaged = {p.name for p in (REPO / "services").iterdir() if (p / "pyproject.toml").exists()}
    assert packaged == {spec.name for spec in SERVICES}


def _replace(relative: str, old: str, new: str) -> Callable[[Path], None]:
    def plant(units: Path) -> None:
        path = units / relative
        text = path.read_text()
        assert old in text, f"{relative} has no {old!r} to plant over"
        path.write_text(text.replace(old, new, 1))

    return plant


def _remove(relative: str) -> Callable[[Path], None]:
    return lambda units: (units / relative).unlink()


def _add(relative: str, text: str) -> Callable[[Path], None]:
    def plant(units: Path) -> None:
        (units / relative).write_text(text)

    return plant


# One mismatch planted in a copy of units/, and what the report must say.
PLANTED = {
    "FileDescriptorName": (
        _replace("kiki-tool-broker.socket", "FileDescriptorName=tools", "FileDescriptorName=tool"),
        "tool-broker: FileDescriptorName=['tool'], not tools",
    ),
    "socket file": (
        _replace("kiki-updater.socket", "/run/kiki/updater.sock", "/run/kiki/update.sock"),
        "updater: ListenStream=['/run/kiki/update.sock'], not /run/kiki/updater.sock",
    ),
    "relay port": (
        _replace("kiki-sync-relay.socket", "127.0.0.1:8765", "127.0.0.1:8766"),
        "sync-relay: ListenStream=['127.0.0.1:8766']",
    ),
    "admin socket mode": (
        _replace("kiki-sync-relay-admin.socket", "SocketMode=0600", "SocketMode=0666"),
        "sync-relay: kiki-sync-relay-admin.socket SocketMode=['0666'], not 0600",
    ),
    "admin socket name": (
        _replace("kiki-sync-relay-admin.socket", "FileDescriptorName=sync-admin", "X=y"),
        "sync-relay: kiki-sync-relay-admin.socket FileDescriptorName=[], not sync-admin",
    ),
    "admin socket missing": (
        _remove("kiki-sync-relay-admin.socket"),
        "sync-relay: no kiki-sync-relay-admin.socket",
    ),
    "command": (
        _replace("kiki-a11y-server.service", "venv/bin/kiki-a11y-server", "venv/bin/kiki-a11y"),
        "a11y-server: ExecStart=['/usr/lib/kiki/venv/bin/kiki-a11y'], not",
    ),
    "user command": (
        _replace("user/kiki-dbus-gateway.service", "bin/kiki-dbus-gateway", "bin/kiki-gateway"),
        "dbus-gateway: ExecStart=",
    ),
    "runtime directory": (
        _replace(
            "kiki-sensor-publisher.service", "KIKI_RUNTIME_DIR=/run/kiki", "KIKI_RUNTIME_DIR=/run/k"
        ),
        "sensor-publisher: Environment=KIKI_RUNTIME_DIR=['/run/k']",
    ),
    "socket missing": (
        _remove("kiki-updater.socket"),
        "updater: no kiki-updater.socket",
    ),
    "service missing": (
        _remove("kiki-sync-relay.service"),
        "sync-relay: no kiki-sync-relay.service",
    ),
    "a socket for the gateway": (
        _add("user/kiki-dbus-gateway.socket", "[Socket]\nListenStream=%t/gateway.sock\n"),
        "dbus-gateway: declares no socket, yet kiki-dbus-gateway.socket exists",
    ),
    "an undeclared unit": (
        _add("kiki-spare.service", "[Service]\nExecStart=/usr/lib/kiki/venv/bin/kiki-spare\n"),
        "kiki-spare.service: no service declares it",
    ),
    "the service's tie to its socket": (
        _replace(
            "kiki-a11y-server.service",
            "Requires=kiki-a11y-server.socket",
            "Requires=kiki-a11y.socket",
        ),
        "a11y-server: kiki-a11y-server.service has no Requires=kiki-a11y-server.socket",
    ),
    "socket paired with another service": (
        _replace(
            "kiki-tool-broker.socket",
            "FileDescriptorName=tools\n",
            "FileDescriptorName=tools\nService=kiki-updater.service\n",
        ),
        "tool-broker: kiki-tool-broker.socket starts ['kiki-updater.service']",
    ),
    "target": (
        _replace("kiki.target", " kiki-sensor-publisher.socket", ""),
        "sensor-publisher: kiki.target does not want kiki-sensor-publisher.socket",
    ),
    "user preset": (
        _replace("user/kiki.preset", "enable kiki-dbus-gateway.service", "disable kiki-x.service"),
        "user/kiki.preset does not enable kiki-dbus-gateway.service",
    ),
    "a socket-activated service enabled": (
        _replace("kiki.preset", "enable kiki.target", "enable kiki.target\nenable kiki-*"),
        "kiki.preset enables kiki-sync-relay.service (by kiki-*): it would run",
    ),
    "README": (
        _replace("README.md", "`/run/kiki/sensors.sock`", "`/run/kiki/sensor.sock`"),
        "README.md: the row of kiki-sensor-publisher.socket lacks `/run/kiki/sensors.sock`",
    ),
    "helper ExecStart": (
        _replace("user/kiki-atspi-bridge.service", "bin/kiki-atspi-bridge", "bin/kiki-atspi"),
        "user/kiki-atspi-bridge.service: ExecStart=['/usr/lib/kiki/venv/bin/kiki-atspi'], not",
    ),
    "helper preset": (
        _replace("user/kiki.preset", "enable kiki-atspi-bridge.service", ""),
        "user/kiki.preset does not enable kiki-atspi-bridge.service",
    ),
    "helper unit gone": (
        _remove("user/kiki-atspi-bridge.service"),
        "no user/kiki-atspi-bridge.service",
    ),
}


@pytest.mark.parametrize("case", PLANTED)
def test_a_planted_mismatch_is_reported(case: str, tmp_path: Path) -> None:
    units = tmp_path / "units"
    shutil.copytree(UNITS, units)
    plant, expected = PLANTED[case]
    assert disagreements(units, SERVICES) == []  # the copy agrees before the plant
    plant(units)
    report = disagreements(units, SERVICES)
    assert any(line.startswith(expected) for line in report), report


def test_a_changed_declaration_is_reported() -> None:
    """The comparison runs both ways: a row changed in the table, units untouched."""
    changed = [
        ServiceSpec("updater", "jsonrpc", fdname="updates", socket_file="updater.sock")
        if spec.name == "updater"
        else spec
        for spec in SERVICES
    ]
    assert "updater: FileDescriptorName=['updater'], not updates" in disagreements(UNITS, changed)
