#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, the deploy/ checks, unit and property tests, and
# the integration tests against a real Kafka broker and a real Prometheus. Installs what the
# tests need when it is missing (a Java runtime and Maven, which fetches the broker's jars on
# first use; Prometheus; Python packages; kustomize) and says what it is doing.
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
# A Prometheus server and promtool, for the alert-rule tests and the scrape integration test.
# The tests start their own server on a free port, so a packaged service that may start with
# the install does not matter.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  apt_install --no-install-recommends prometheus
fi
if ! python3 -c 'import kubernetes_validate, yaml, jsonschema, pytest' 2>/dev/null; then
  say "installing the Python packages of the deploy/ checks with pip"
  python3 -m pip install -q --disable-pip-version-check \
    'kubernetes-validate==1.37.0' 'PyYAML==6.0.3' 'jsonschema==4.26.0' 'pytest==9.2.0'
fi
# Kustomize renders deploy/kubernetes: kubectl's built-in one, a kustomize binary, or one built
# from its Go module (a pinned release) into target/tools.
if kubectl kustomize --help >/dev/null 2>&1; then
  IPM_KUSTOMIZE="kubectl kustomize"
elif command -v kustomize >/dev/null; then
  IPM_KUSTOMIZE="kustomize build"
else
  if [ ! -x target/tools/kustomize ]; then
    command -v go >/dev/null || { say "need kubectl, kustomize or Go to render deploy/kubernetes"; exit 1; }
    say "building kustomize v5.5.0 with go install (first run only)"
    GOBIN="$PWD/target/tools" go install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0
  fi
  IPM_KUSTOMIZE="$PWD/target/tools/kustomize build"
fi
export IPM_KUSTOMIZE

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

say "checking deploy/ (manifests rendered with $IPM_KUSTOMIZE, alert rules, dashboard)"
python3 -m pytest -q -p no:cacheprovider tests/deploy

say "running tests (the first run builds librdkafka and fetches the Kafka broker jars)"
cargo test --all-targets --locked
