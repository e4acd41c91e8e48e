#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit, property and integration tests.
# Works on a fresh machine: installs what it needs through the project's own scripts.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --locked --all-targets
