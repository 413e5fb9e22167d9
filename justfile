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
sync:
    {{uv}} sync --frozen --all-packages --quiet

# Bring up the whole constellation on this machine (Ctrl-C stops it)
up *ARGS: sync up-deps
    {{venv}}/bin/kiki up {{ARGS}}

# Ask every running service for its health
status *ARGS: sync
    {{venv}}/bin/kiki status {{ARGS}}

# What `up` needs from the system: a dbus-daemon for the private session bus
up-deps:
    scripts/install-test-deps --only dbus-daemon

# Install the system packages the tests drive (apt; skipped when all are present)
test-deps:
    scripts/install-test-deps

# The whole test suite: unit, integration, real systemd and interop tiers, then lint and gen check
test *ARGS: sync test-deps
    {{venv}}/bin/pytest {{ARGS}}
    {{just_executable()}} lint
    {{just_executable()}} gen-check

# Only the fast tiers (no booted systemd, no third-party peers)
test-fast *ARGS: sync
    {{venv}}/bin/pytest -m "not system and not interop" {{ARGS}}

# Benchmarks (never part of the default test run); each prints its same-run baseline and ratio
bench *ARGS: sync
    #!/usr/bin/env bash
    set -euo pipefail
    for b in tests/bench/bench_*.py; do
        echo "== $b"
        {{py}} "$b" {{ARGS}}
    done

# ruff and mypy --strict
lint: sync
    {{venv}}/bin/ruff check .
    {{venv}}/bin/ruff format --check .
    {{venv}}/bin/mypy libkiki/src services/*/src tests
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
