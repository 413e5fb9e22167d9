#!/usr/bin/env bash
# Installs Kiki into /usr: the one install script the bootc image and the system test both run.
#   image/install.sh [SOURCE_DIR] [WHEELHOUSE]
# SOURCE_DIR is a checkout (default /src); WHEELHOUSE holds the wheels built by
# image/build-wheelhouse.sh (default SOURCE_DIR/build/wheelhouse). No network is used.
# With DESTDIR set, files go under it (for staging); systemctl is then not called.
set -euo pipefail
src=${1:-/src}
wheels=${2:-$src/build/wheelhouse}
dest=${DESTDIR:-}
python=${PYTHON:-/usr/bin/python3}
prefix=$dest/usr/lib/kiki

[ -d "$src/units" ] || { echo "install.sh: $src is not a Kiki checkout" >&2; exit 1; }
for wheel in libkiki kiki_cli; do
    [ -n "$(ls "$wheels/$wheel"-*.whl 2>/dev/null)" ] || {
        echo "install.sh: no $wheel wheel in $wheels (run image/build-wheelhouse.sh)" >&2; exit 1; }
done

echo "installing Kiki into $prefix" >&2
rm -rf "$prefix/venv"
mkdir -p "$prefix"
"$python" -m venv "$prefix/venv"
# The device gets the operator's tools (kiki-cli: the kiki command) beside the runtime and the
# services; a service's own container (service.Containerfile) holds libkiki and that service.
"$prefix/venv/bin/pip" install --quiet --disable-pip-version-check --no-index \
    --find-links "$wheels" libkiki kiki-cli kiki-tool-broker kiki-a11y-server \
    kiki-sensor-publisher kiki-dbus-gateway kiki-sync-relay kiki-updater

install -d "$dest/usr/bin" "$dest/usr/lib/systemd/system" "$dest/usr/lib/systemd/user" \
    "$dest/usr/lib/sysusers.d" "$dest/usr/lib/tmpfiles.d" "$dest/usr/lib/systemd/system-preset" \
    "$dest/usr/lib/systemd/user-preset" "$dest/usr/share/kiki" "$dest/usr/share/doc/kiki"
ln -sfn /usr/lib/kiki/venv/bin/kiki "$dest/usr/bin/kiki"
install -m 0644 "$src"/units/*.service "$src"/units/*.socket "$src"/units/kiki.target \
    "$dest/usr/lib/systemd/system/"
install -m 0644 "$src"/units/user/*.service "$dest/usr/lib/systemd/user/"
# The units say Type=notify-reload (systemd >= 253: `systemctl reload` sends SIGHUP and waits for
# the service's RELOADING=1 ... READY=1). An older systemd would ignore that line and run the
# service as Type=simple, so there they become Type=notify with an ExecReload= that sends the
# same SIGHUP. SYSTEMD_VERSION overrides the version found (e.g. when staging with DESTDIR).
systemd_version=${SYSTEMD_VERSION:-}
if [ -z "$systemd_version" ]; then
    # "systemd 252 (252.39-1~deb12u2)"; plain bash, as awk may be an unresolved alternative here.
    read -r _ systemd_version _ < <(systemctl --version 2>/dev/null) || true
fi
if ! [[ $systemd_version =~ ^[0-9]+$ ]]; then
    echo "install.sh: cannot tell systemd's version; the units keep Type=notify-reload" >&2
elif [ "$systemd_version" -lt 253 ]; then
    echo "install.sh: systemd $systemd_version has no Type=notify-reload; using Type=notify and ExecReload=" >&2
    # shellcheck disable=SC2016 # $MAINPID is systemd's to expand, not the shell's
    sed -i 's|^Type=notify-reload$|Type=notify\nExecReload=/bin/kill -HUP $MAINPID|' \
        "$dest"/usr/lib/systemd/system/kiki-*.service "$dest"/usr/lib/systemd/user/kiki-*.service
fi
install -m 0644 "$src/units/sysusers.d/kiki.conf" "$dest/usr/lib/sysusers.d/kiki.conf"
install -m 0644 "$src/units/tmpfiles.d/kiki.conf" "$dest/usr/lib/tmpfiles.d/kiki.conf"
install -m 0644 "$src/units/kiki.preset" "$dest/usr/lib/systemd/system-preset/90-kiki.preset"
install -m 0644 "$src/units/user/kiki.preset" "$dest/usr/lib/systemd/user-preset/90-kiki.preset"
# The published lexicons, where libkiki looks for them outside a checkout.
rm -rf "$dest/usr/share/kiki/lexicons"
cp -r "$src/schemas/lexicons" "$dest/usr/share/kiki/lexicons"
install -m 0644 "$src/schemas/a11y.fbs" "$dest/usr/share/kiki/a11y.fbs"
# The sensor sample layouts (documentation for readers in other languages; the code has its own).
rm -rf "$dest/usr/share/kiki/sensors"
cp -r "$src/schemas/sensors" "$dest/usr/share/kiki/sensors"
install -m 0644 "$src/README.md" "$dest/usr/share/doc/kiki/README.md"
# The device's default configuration (the relay links the session "device"; the broker trusts
# it as a delegate and grants remote people nothing). An operator's own file is kept. 0644: the
# services read them as dynamic users.
install -d -m 0755 "$dest/etc/kiki"
for conf in "$src"/image/etc/kiki/*.toml; do
    target="$dest/etc/kiki/$(basename "$conf")"
    [ -e "$target" ] || install -m 0644 "$conf" "$target"
done
for readme in "$src"/services/*/README.md; do
    name=$(basename "$(dirname "$readme")")
    install -D -m 0644 "$readme" "$dest/usr/share/doc/kiki/services/$name/README.md"
done

if [ -z "$dest" ]; then
    # Works offline too (image builds): preset only creates the enablement symlinks.
    systemctl preset kiki.target kiki-tool-broker.socket kiki-a11y-server.socket \
        kiki-sensor-publisher.socket kiki-sync-relay.socket kiki-updater.socket
    systemctl --global preset kiki-dbus-gateway.service
fi
echo "Kiki installed: $("$prefix/venv/bin/kiki" --version)" >&2
