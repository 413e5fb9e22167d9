#!/usr/bin/env bash
# Builds the wheelhouse that image/install.sh installs from without a network: wheels of
# libkiki, kiki-cli, the six services and every pinned dependency in uv.lock.
#   image/build-wheelhouse.sh OUT_DIR
set -euo pipefail
out=${1:?usage: build-wheelhouse.sh OUT_DIR}
here=$(cd "$(dirname "$0")/.." && pwd)
uv=${UV:-$here/.tools/bin/uv}
command -v "$uv" >/dev/null || uv=uv
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$here"
echo "building Kiki's wheels into $out" >&2
"$uv" build --all-packages --wheel --out-dir "$out" --quiet
"$uv" export --frozen --no-dev --all-packages --no-emit-workspace --no-hashes \
    --format requirements-txt --output-file "$out/requirements.txt" --quiet
echo "fetching the pinned dependencies as wheels" >&2
# A throw-away venv with pip: uv has no download command, and the wheels must be files
# (`pip wheel` also builds the few dependencies published only as sdists, e.g. jsonrpcserver).
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$uv" venv --quiet --seed "$tmp/venv"
"$tmp/venv/bin/pip" wheel --quiet --disable-pip-version-check --no-deps \
    --wheel-dir "$out" -r "$out/requirements.txt" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
test -n "$(ls "$out"/jsonrpcserver-*.whl 2>/dev/null)" || { echo "wheelhouse incomplete" >&2; exit 1; }
count=$(find "$out" -name "*.whl" | wc -l)
echo "wheelhouse ready: $count wheels" >&2
