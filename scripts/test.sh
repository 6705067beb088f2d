#!/usr/bin/env bash
# Runs every Aeris test. On a fresh Debian machine it first installs what the
# tests talk to (PostgreSQL 15 + PostGIS 3, Mosquitto and its clients,
# OpenSSL for test certificates, Redis, Chromium for the map test,
# Prometheus for the alert-rule tests, kubectl for the manifests, systemd
# for the unit check), starts PostgreSQL if it is not running, and creates
# the test role; it builds the board (aarch64) agent, installing its cross
# toolchain and qemu when missing (cross/setup.sh). The tests then start
# their own brokers and Redis servers on free
# ports and create and drop their own databases; nothing else on the machine
# is touched.
#
# Environment: AERIS_SKIP_BOARD_TESTS=1 skips building the aarch64 agent, and
# its tests (loudly) when it is missing; CI never sets it.
# AERIS_TEST_PG_URL overrides the PostgreSQL server the tests
# use (default postgres://aeris_test:aeris_test@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

missing=()
for pkg in postgresql-15-postgis-3 mosquitto mosquitto-clients openssl redis-server chromium prometheus systemd; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
# kubectl (for `kubectl kustomize`) may come from another package already.
command -v kubectl >/dev/null || missing+=(kubernetes-client)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -z "${AERIS_TEST_PG_URL:-}" ]; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    step "starting PostgreSQL"
    cluster=$(ls /etc/postgresql | sort -V | tail -n 1)
    as_root pg_ctlcluster --skip-systemctl-redirect "$cluster" main start || true
    for _ in $(seq 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
    pg_isready -h 127.0.0.1 -p 5432
  fi
  if ! as_postgres psql -qtAc "SELECT 1 FROM pg_roles WHERE rolname = 'aeris_test'" | grep -q 1; then
    step "creating the test role aeris_test"
    as_postgres psql -qc "CREATE ROLE aeris_test SUPERUSER LOGIN PASSWORD 'aeris_test'"
  fi
fi

# kubernetes-validate (pinned; it carries the Kubernetes schemas, so it
# works offline) for the deploy/k8s test, in a virtualenv of its own.
K8S_VENV=${AERIS_K8S_VENV:-$HOME/.cache/aeris-k8s-venv}
export AERIS_K8S_VENV=$K8S_VENV
if ! "$K8S_VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -qx '1.37.0'; then
  step "installing kubernetes-validate into $K8S_VENV"
  python3 -c 'import ensurepip' 2>/dev/null || {
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  }
  rm -rf "$K8S_VENV"
  python3 -m venv "$K8S_VENV"
  "$K8S_VENV/bin/pip" install -q kubernetes-validate==1.37.0
fi

step "building"
cargo build --workspace --bins --quiet
# The board agent (aarch64) for tests/tests/board.rs, with the profile that
# builds fast; cross/setup.sh installs its toolchain and qemu when missing.
if [ -z "${AERIS_SKIP_BOARD_TESTS:-}" ]; then
  step "building the board agent (aarch64, profile board-ci)"
  cross/build.sh --binary-only --profile board-ci
else
  echo "######## AERIS_SKIP_BOARD_TESTS is set: the aarch64 agent is not built; its tests run only if it was built before ########"
fi
step "testing"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One total over every test binary, so the run ends on what it counted.
step "done"
awk '/^test result:/ { p += $4; f += $6; s += $8 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
