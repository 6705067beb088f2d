#!/usr/bin/env bash
# Measures the board agent's memory under qemu-user with a realistic load:
# SENSORS sensors publishing once a second (flat JSON, PM2.5 + humidity +
# position) for SECONDS seconds, both shipped models on, batches synced to
# a gateway (SQLite sink) on a local Mosquitto. Prints VmRSS and VmHWM of
# the qemu process, which include qemu's own code cache (an upper bound of
# what the agent takes on a board).
#
# Usage: cross/measure-rss.sh BINARY [SENSORS] [SECONDS]
# Needs: mosquitto, mosquitto_pub, qemu-aarch64-static, and the host
# aeris-gateway in $CARGO_TARGET_DIR/debug (cargo build --workspace --bins).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "$1") sensors=${2:-20} seconds=${3:-120}
gateway=${CARGO_TARGET_DIR:-target}/debug/aeris-gateway
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -n "${KEEP:-}" ] && echo "kept $work" || rm -rf "$work"; }
trap cleanup EXIT
port=$(( 20000 + RANDOM % 10000 ))
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$work/m.conf"
mosquitto -c "$work/m.conf" > "$work/m.log" 2>&1 & pids+=($!)
sleep 1
AERIS_BROKER__PORT=$port AERIS_API__LISTEN= AERIS_SQLITE_PATH="$work/gw.db" \
  "$gateway" > "$work/gw.log" 2>&1 & pids+=($!)
cat > "$work/edge.toml" <<TOML
device_id = "rss-1"
data_dir = "$work/edge"
health_listen = ""
[local]
port = $port
[cloud]
port = $port
[infer]
models = ["$PWD/models/pm25_nowcast", "$PWD/models/pm_anomaly"]
TOML
qemu-aarch64-static -L /usr/aarch64-linux-gnu "$bin" --config "$work/edge.toml" > "$work/edge.log" 2>&1 &
edge=$!; pids+=($edge)
sleep 5
end=$(( SECONDS + seconds ))
while [ $SECONDS -lt $end ]; do
  ts=$(date +%s.%3N)
  for s in $(seq 1 "$sensors"); do
    mosquitto_pub -p "$port" -q 1 -t "sensors/s$s/air" \
      -m "{\"ts\":$ts,\"pm25\":$(( RANDOM % 80 )).5,\"rh\":55,\"lat\":48.1$s,\"lon\":11.5$s}"
  done
  sleep 1
done
grep -E '^(VmRSS|VmHWM)' "/proc/$edge/status"
echo "rows stored by the gateway: $(sqlite3 "$work/gw.db" 'SELECT count(*) FROM readings')"
