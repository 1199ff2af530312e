#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and property tests, and the integration
# tests against a real Kafka broker. Installs what the tests need when it is missing (a Java
# runtime and Maven, which fetches the broker's jars on first use) and says what it is doing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { say "need root or sudo to install: $*"; exit 1; }
    sudo="sudo"
  fi
  say "installing $* with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

if ! command -v java >/dev/null; then
  apt_install openjdk-17-jre-headless
fi
if ! command -v mvn >/dev/null; then
  apt_install maven
fi
if ! command -v cargo >/dev/null; then
  say "cargo is missing: install Rust with rustup (https://rustup.rs) and run this again"
  exit 1
fi
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    say "adding the $component component"
    rustup component add "$component"
  fi
done

say "checking formatting"
cargo fmt --all -- --check

say "running clippy"
cargo clippy --all-targets --locked -- -D warnings

say "running tests (the first run builds librdkafka and fetches the Kafka broker jars)"
cargo test --all-targets --locked
