#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the real peers (apt + a pip venv),
# checks formatting and lints, builds (and packages: the .deb), and runs every tier (unit, in-process, and the
# black-box protocol tests against gunicorn, uvicorn, curl and nginx).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== peers"
bash protocol-tests/peers/install.sh

echo "== fmt and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build"
cargo build --locked -p portico

echo "== package"
# the .deb (release profile) that tests/packaging.rs inspects; cargo-deb from crates.io
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked --version 3.8.0
fi
cargo deb -p portico --locked

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
