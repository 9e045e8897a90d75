#!/usr/bin/env bash
# Runs the whole system locally: infrastructure (PostgreSQL checked, broker started if none
# answers), the three services with migrations applied at start-up, and the demo products.
# Prints where each service listens; Ctrl-C stops everything this script started.
#
#   scripts/run.sh                 debug build
#   PROFILE=release scripts/run.sh optimised build
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PROFILE=${PROFILE:-debug}
PG_BASE=${PG_BASE:-postgres://postgres:postgres@127.0.0.1:5432}
export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
export RUST_LOG=${RUST_LOG:-info,rdkafka=warn,sqlx=warn}
LOG_DIR="$ROOT/.local/logs"
mkdir -p "$LOG_DIR"

log() { printf '[run] %s\n' "$*" >&2; }

pid_before=$(cat .local/nisshi.pid 2>/dev/null || true)
# Durable broker storage (under .local/broker/): events published but not yet consumed when
# this script stops are still there at the next start. (A memory broker left by the tests is
# restarted with durable storage.)
BROKER_STORAGE=durable scripts/infra.sh up
pid_after=$(cat .local/nisshi.pid 2>/dev/null || true)
# Stop at exit the broker this run started (or restarted), and only that one.
broker_started_here=false
if [ -n "$pid_after" ] && [ "$pid_after" != "$pid_before" ]; then broker_started_here=true; fi

log "building the services ($PROFILE)"
# The checked queries compile against the committed offline data, whatever DATABASE_URL says.
export SQLX_OFFLINE=true
if [ "$PROFILE" = release ]; then cargo build --release --bins; else cargo build --bins; fi
BIN="$ROOT/target/$PROFILE"

pids=()
stopping=false
stop_all() {
  trap - INT TERM EXIT
  stopping=true
  log "stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if $broker_started_here; then scripts/infra.sh down; fi
}
trap stop_all INT TERM EXIT

start() {
  local name=$1; shift
  env "$@" "$BIN/$name" >"$LOG_DIR/$name.log" 2>&1 &
  pids+=($!)
}

wait_ready() {
  local name=$1 url=$2
  for _ in $(seq 1 300); do
    if curl -fs "$url/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "$name did not become ready; its log ($LOG_DIR/$name.log) ends with:"
  tail -n 20 "$LOG_DIR/$name.log" >&2
  exit 1
}

start order-api HTTP_ADDR=127.0.0.1:8080 DATABASE_URL="$PG_BASE/orders"
# A fixed instance id (static membership): a restarted consumer takes its partitions back at once.
start catalog-consumer HTTP_ADDR=127.0.0.1:8081 DATABASE_URL="$PG_BASE/catalog" CONSUMER_INSTANCE_ID=catalog-consumer-0
wait_ready order-api http://127.0.0.1:8080
start outbox-relay HTTP_ADDR=127.0.0.1:8082 DATABASE_URL="$PG_BASE/orders"
wait_ready catalog-consumer http://127.0.0.1:8081
wait_ready outbox-relay http://127.0.0.1:8082

# Demo products (catalog-consumer has applied the catalog migrations by now).
psql "$PG_BASE/catalog" -q -v ON_ERROR_STOP=1 -f scripts/seed-demo.sql >/dev/null

cat >&2 <<MSG
[run] ready:
  order-api         http://127.0.0.1:8080   (POST /orders, GET /orders/{id}, GET /users/{id}/orders, /openapi.json)
  catalog-consumer  http://127.0.0.1:8081   (GET /catalogs, GET /catalogs/{id})
  outbox-relay      http://127.0.0.1:8082   (/healthz, /readyz, /metrics)
  broker            $KAFKA_BROKERS
  logs (JSON lines) $LOG_DIR/
Try:
  curl -s localhost:8081/catalogs
  curl -s -XPOST localhost:8080/orders -H 'content-type: application/json' \\
       -d '{"userId":"user-1","productId":"CATALOG-0001","quantity":10,"unitPrice":1500}'
  curl -s localhost:8081/catalogs
Ctrl-C stops everything.
MSG

# Exit as soon as any service dies (and stop the others), or on Ctrl-C.
wait -n "${pids[@]}" || true
$stopping || log "a service exited; see $LOG_DIR/"
