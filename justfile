# Every task a person runs. `./dev <recipe>` bootstraps uv and just first; inside the venv
# plain `just <recipe>` works too.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := justfile_directory() / ".venv"
uv := env_var_or_default("UV", justfile_directory() / ".tools/bin/uv")
py := venv / "bin/python"

# List the recipes
default:
    @just --list

# Create or update .venv from uv.lock (quick when nothing changed)
sync: build-deps
    {{uv}} sync --frozen --all-packages --quiet

# Bring up the whole constellation on this machine (Ctrl-C stops it)
up *ARGS: sync up-deps
    {{venv}}/bin/kiki up {{ARGS}}

# Ask every running service for its health
status *ARGS: sync
    {{venv}}/bin/kiki status {{ARGS}}

# What building the venv needs from the system: PyGObject (the updater's libostree) builds from
# PyPI against the system's gobject-introspection and cairo
build-deps:
    scripts/install-test-deps --only libgirepository1.0-dev libcairo2-dev pkg-config

# What `up` needs from the system: a dbus-daemon for the private session bus, libostree for
# the updater
up-deps:
    scripts/install-test-deps --only dbus-daemon ostree gir1.2-ostree-1.0

# Install the system packages the tests drive (apt; skipped when all are present), then the npm
# parts from their committed lockfiles (npm ci; skipped while node_modules matches the lockfile)
test-deps:
    scripts/install-test-deps
    scripts/install-node-deps

# Everything: all tiers (with branch coverage), then the unit tier on the image's Python
# (3.13), lint and gen check
test *ARGS: sync test-deps
    {{just_executable()}} test-coverage {{ARGS}}
    {{just_executable()}} test-image-python {{ARGS}}
    {{just_executable()}} lint
    {{just_executable()}} gen-check

# Coverage covers the processes the tests start too (pyproject's [tool.coverage]); the floor
# holds for the whole run only, so a run of some tests reports without it.
coverage_floor := "87"

# All tiers under coverage, then the branch coverage report (and its floor, on a whole run)
test-coverage *ARGS: sync
    #!/usr/bin/env bash
    set -euo pipefail
    {{venv}}/bin/coverage erase
    status=0
    mapfile -t args < <(scripts/test-paths {{ARGS}})
    {{venv}}/bin/coverage run -m pytest --durations=25 "${args[@]}" || status=$?
    {{venv}}/bin/coverage combine -q
    if [ "$status" -ne 0 ]; then exit "$status"; fi
    if [ -z "{{ARGS}}" ]; then
        {{venv}}/bin/coverage report --fail-under={{coverage_floor}}
    else
        {{venv}}/bin/coverage report
    fi

# .venv-3.13 is synced from the same uv.lock. Skipped, saying why, when there is no 3.13 here.
# The unit tier (tier 1, protocol cores and pure functions: about a minute) on CPython 3.13, the
# image's Python (python3.13 on PATH or in pyenv). The integration tier already runs once, on
# 3.11, under coverage; running it twice cost CI twelve minutes on a busy 2-core machine.
test-image-python *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    py=""
    for candidate in "$(command -v python3.13 || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13; do
        if [ -x "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
            py=$candidate
            break
        fi
    done
    if [ -z "$py" ]; then
        echo "test-image-python: SKIPPED, no CPython 3.13 on this machine (python3.13 on PATH or in pyenv); the image's Python is not tested" >&2
        exit 0
    fi
    echo "== unit tier on $("$py" --version) ($py)"
    UV_PROJECT_ENVIRONMENT={{justfile_directory()}}/.venv-3.13 {{uv}} sync --frozen --all-packages --quiet -p "$py"
    mapfile -t args < <(scripts/test-paths {{ARGS}})
    {{justfile_directory()}}/.venv-3.13/bin/pytest -m unit "${args[@]}"

# Only the fast tiers, unit and integration (no booted systemd, no third-party peers); paths are
# relative to tests/, e.g. `just test-fast services/tool-broker`
test-fast *ARGS: sync
    #!/usr/bin/env bash
    set -euo pipefail
    mapfile -t args < <(scripts/test-paths {{ARGS}})
    {{venv}}/bin/pytest -m "unit or integration" "${args[@]}"

# One tier (unit, integration, system or interop), e.g. `just test-tier unit libkiki/rpc`
test-tier TIER *ARGS: sync
    #!/usr/bin/env bash
    set -euo pipefail
    mapfile -t args < <(scripts/test-paths {{ARGS}})
    {{venv}}/bin/pytest -m {{TIER}} "${args[@]}"

# Benchmarks (never part of the default test run); each prints its same-run baseline and ratio
bench *ARGS: sync
    #!/usr/bin/env bash
    set -euo pipefail
    for b in tests/bench/bench_*.py; do
        echo "== $b"
        {{py}} "$b" {{ARGS}}
    done

# ruff, mypy --strict, the layering contracts (.importlinter) and shellcheck
lint: sync
    {{venv}}/bin/ruff check .
    {{venv}}/bin/ruff format --check .
    {{venv}}/bin/mypy libkiki/src cli/src services/*/src tests
    {{venv}}/bin/lint-imports --no-cache
    shellcheck dev .ci/run scripts/* image/*.sh

# Format the code
fmt: sync
    {{venv}}/bin/ruff format .
    {{venv}}/bin/ruff check --fix .

# Regenerate generated code (FlatBuffers bindings)
gen: sync
    scripts/gen

# Fail when regenerating would change a committed file
gen-check: gen
    git diff --exit-code -- libkiki/src/libkiki/_generated || (echo "generated code is stale: run 'just gen' and commit" >&2; exit 1)

# hadolint on the image recipes
image-lint: sync
    {{venv}}/bin/hadolint --config image/.hadolint.yaml image/Containerfile image/service.Containerfile

# Build the wheelhouse the image and the system test install from
wheelhouse DIR="build/wheelhouse": sync
    UV={{uv}} image/build-wheelhouse.sh {{DIR}}
