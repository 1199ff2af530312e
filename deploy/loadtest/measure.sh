#!/usr/bin/env bash
# Measures the release binary's memory and CPU under synthetic load against a real Kafka broker
# on loopback, for sizing the Kubernetes requests and limits. Not part of the test suite: it
# runs for several minutes and its figures depend on the machine.
#
#   deploy/loadtest/measure.sh [RATE] [KEYS] [SECONDS]
#
# Starts a single-node KRaft broker from the jars the integration tests fetch (run
# tests/run-all.sh once first), builds and starts target/release/ipm-stream with the default
# windows, feeds it RATE impressions/s (IPM 10) over KEYS creatives for SECONDS, samples
# /metrics every 5 s, then restarts the service once to time the state rebuild. Everything it
# starts is stopped on exit; samples go to $OUT (default target/loadtest).
set -euo pipefail
cd "$(dirname "$0")/../.."

RATE=${1:-5000}
KEYS=${2:-10000}
SECONDS_OF_LOAD=${3:-300}
OUT=${OUT:-target/loadtest}
JARS=${IPM_KAFKA_JARS:-$(ls -d target/kafka-broker/*/ 2>/dev/null | tail -n 1)}
PARTITIONS=6

say() { printf '==> %s\n' "$*" >&2; }
[ -n "$JARS" ] && [ -f "$JARS/.complete" ] || { say "no broker jars: run tests/run-all.sh first"; exit 1; }
python3 -c 'import confluent_kafka' 2>/dev/null || pip install -q 'confluent-kafka==2.16.1'

rm -rf "$OUT" && mkdir -p "$OUT"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); CPORT=$(free_port); HTTP=$(free_port)
BOOTSTRAP=127.0.0.1:$PORT

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

cat >"$OUT/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$PWD/$OUT/kafka-data
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
say "starting Kafka on $BOOTSTRAP"
java -cp "$JARS/*" kafka.tools.StorageTool format --config "$OUT/server.properties" \
  --cluster-id "$(python3 -c 'import base64,os;print(base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=").replace("-","A"))')" \
  >"$OUT/format.log" 2>&1
java -Xmx1g -XX:+UseSerialGC -cp "$JARS/*" kafka.Kafka "$OUT/server.properties" >"$OUT/broker.log" 2>&1 &
pids+=($!)
python3 - "$BOOTSTRAP" 2>>"$OUT/probe.log" <<'PY'
import sys, time
from confluent_kafka.admin import AdminClient
admin = AdminClient({"bootstrap.servers": sys.argv[1]})
for _ in range(120):
    try:
        admin.list_topics(timeout=2); sys.exit(0)
    except Exception:
        time.sleep(1)
sys.exit("broker did not start")
PY

python3 deploy/loadtest/loadgen.py --bootstrap "$BOOTSTRAP" --partitions $PARTITIONS \
  --create-topics --duration 0 >/dev/null

say "building the release binary"
cargo build --release --locked --bin ipm-stream 2>"$OUT/build.log"

start_service() {
  IPM__KAFKA__BROKERS=$BOOTSTRAP IPM__HTTP__LISTEN=127.0.0.1:$HTTP \
    target/release/ipm-stream --config config/ipm-stream.toml >>"$OUT/service.log" 2>&1 &
  SERVICE=$!
  pids+=("$SERVICE")
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$HTTP/healthz" >/dev/null && return; sleep 0.2; done
  say "service did not start"; exit 1
}

# One sample: unix time, RSS bytes, CPU seconds, counted impressions, active keys, panes,
# exposition bytes, summed consumer lag.
sample() {
  curl -sf "http://127.0.0.1:$HTTP/metrics" >"$OUT/metrics.txt" || return 0
  awk -v now="$(date +%s.%N)" -v size="$(stat -c %s "$OUT/metrics.txt")" '
    /^process_resident_memory_bytes / { rss = $2 }
    /^process_cpu_seconds_total / { cpu = $2 }
    /^ipm_stream_events_consumed_total\{outcome="counted"/ { counted += $2 }
    /^ipm_stream_active_keys / { keys = $2 }
    /^ipm_stream_window_panes / { panes = $2 }
    /^ipm_stream_consumer_lag_messages\{/ { lag += $2 }
    END { printf "%s %d %s %d %d %d %d %d\n", now, rss, cpu, counted, keys, panes, size, lag }
  ' "$OUT/metrics.txt" >>"$OUT/samples.txt"
}

start_service
say "feeding $RATE impressions/s over $KEYS keys for ${SECONDS_OF_LOAD}s"
python3 deploy/loadtest/loadgen.py --bootstrap "$BOOTSTRAP" --partitions $PARTITIONS \
  --rate "$RATE" --keys "$KEYS" --duration "$SECONDS_OF_LOAD" >"$OUT/loadgen.json" &
LOADGEN=$!
pids+=("$LOADGEN")
while kill -0 "$LOADGEN" 2>/dev/null; do sample; sleep 5; done
for _ in 1 2 3 4 5 6; do sample; sleep 5; done

cp "$OUT/metrics.txt" "$OUT/metrics-loaded.txt"
say "restarting the service to time the state rebuild"
kill -TERM "$SERVICE"; wait "$SERVICE" || true
start_service
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$HTTP/readyz" >/dev/null && break
  sleep 1
done
sample
curl -sf "http://127.0.0.1:$HTTP/metrics" | grep -E '^(ipm_stream_restore_duration_seconds|process_resident_memory_bytes) ' >"$OUT/restore.txt"

python3 - "$OUT" "$SECONDS_OF_LOAD" <<'PY'
import json, sys
out, load = sys.argv[1], float(sys.argv[2])
rows = [list(map(float, l.split())) for l in open(f"{out}/samples.txt") if l.strip()]
gen = json.load(open(f"{out}/loadgen.json"))
# Every sample but the last, which was taken after the restart.
first, loaded = rows[0], rows[:-1]
steady = [r for r in loaded if r[0] - first[0] >= 60] or loaded
cpu = (steady[-1][2] - steady[0][2]) / max(steady[-1][0] - steady[0][0], 1)
rate = (steady[-1][3] - steady[0][3]) / max(steady[-1][0] - steady[0][0], 1)
restore = dict(l.split() for l in open(f"{out}/restore.txt"))
dedupe = next((float(l.split()[1]) for l in open(f"{out}/metrics-loaded.txt")
               if l.startswith("ipm_stream_dedupe_ids ")), 0)
print(json.dumps({
    "generator": gen,
    "counted_events_per_second_steady": round(rate),
    "cpu_cores_steady": round(cpu, 3),
    "rss_max_mib": round(max(r[1] for r in loaded) / 2**20, 1),
    "rss_end_mib": round(loaded[-1][1] / 2**20, 1),
    "dedupe_ids": int(dedupe),
    "active_keys": int(loaded[-1][4]),
    "window_panes": int(loaded[-1][5]),
    "metrics_exposition_kib": round(loaded[-1][6] / 1024),
    "max_consumer_lag": int(max(r[7] for r in loaded)),
    "restore_seconds": float(restore["ipm_stream_restore_duration_seconds"]),
    "rss_after_restore_mib": round(float(restore["process_resident_memory_bytes"]) / 2**20, 1),
}, indent=2))
PY
