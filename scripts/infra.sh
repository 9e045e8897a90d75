#!/usr/bin/env bash
# Local infrastructure for development and tests, idempotent:
#   scripts/infra.sh up      PostgreSQL checked (orders + catalog databases created),
#                            a Kafka-protocol broker at KAFKA_BROKERS (Tansu installed and
#                            started when none answers), topics created.
#   scripts/infra.sh down    stops only what `up` started (the pid file in .local/).
#   scripts/infra.sh status  says what answers.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE_DIR="$ROOT/.local"
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
ORDER_EVENTS_TOPIC=${ORDER_EVENTS_TOPIC:-order-events}
DLQ_TOPIC=${DLQ_TOPIC:-order-events.dlq}
TOPIC_PARTITIONS=${TOPIC_PARTITIONS:-6}
TANSU_VERSION=0.6.0
# Outside the work tree, so a fresh clone reuses the (10-15 minute) build.
TANSU_ROOT=${TANSU_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox-tansu}
TANSU="$TANSU_ROOT/bin/tansu"
TANSU_PID="$STATE_DIR/tansu.pid"

log() { printf '[infra] %s\n' "$*" >&2; }
die() { printf '[infra] error: %s\n' "$*" >&2; exit 1; }

first_broker() { echo "${KAFKA_BROKERS%%,*}"; }

# true when something accepts TCP connections at host:port
answers() {
  local host=${1%:*} port=${1##*:}
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

postgres_up() {
  command -v psql >/dev/null || die "psql not found: install the PostgreSQL client (apt-get install postgresql-client)"
  if ! psql "$PG_ADMIN_URL" -Atqc 'select 1' >/dev/null 2>&1; then
    die "PostgreSQL does not answer at $PG_ADMIN_URL.
  Start a local server (Debian: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start),
  or run one with Docker: docker compose up -d postgres,
  or point PG_ADMIN_URL at yours."
  fi
  for db in orders catalog; do
    if [ "$(psql "$PG_ADMIN_URL" -Atqc "select 1 from pg_database where datname = '$db'")" != 1 ]; then
      psql "$PG_ADMIN_URL" -qc "create database $db" >/dev/null
      log "created database $db"
    fi
  done
  log "PostgreSQL ready at ${PG_ADMIN_URL%/*} (databases orders, catalog)"
}

tansu_installed() {
  [ -x "$TANSU" ] && "$TANSU" --version 2>/dev/null | grep -qx "tansu $TANSU_VERSION"
}

install_tansu() {
  tansu_installed && return 0
  log "installing Tansu $TANSU_VERSION into $TANSU_ROOT (once; about 10-15 minutes on 2 cores)"
  mkdir -p "$TANSU_ROOT"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,postgres \
    --root "$TANSU_ROOT" --force >&2
  tansu_installed || die "Tansu was not installed at $TANSU"
}

# true when the pid file names a live Tansu process (not a recycled pid)
tansu_running() {
  [ -f "$TANSU_PID" ] || return 1
  local pid
  pid=$(cat "$TANSU_PID")
  kill -0 "$pid" 2>/dev/null && [ "$(ps -p "$pid" -o comm= 2>/dev/null)" = tansu ]
}

create_topics() {
  local broker=$1
  for topic in "$ORDER_EVENTS_TOPIC" "$DLQ_TOPIC"; do
    local out
    if out=$("$TANSU" topic create "$topic" --broker "tcp://$broker" --partitions "$TOPIC_PARTITIONS" 2>&1); then
      log "created topic $topic ($TOPIC_PARTITIONS partitions)"
    elif grep -qi 'exist' <<<"$out"; then
      :
    else
      log "cannot create topic $topic: $out"
      return 1
    fi
  done
}

kafka_up() {
  local broker
  broker=$(first_broker)
  if answers "$broker"; then
    if tansu_running; then
      create_topics "$broker" || die "the topics are missing on $broker"
    else
      log "using the broker already answering at $broker"
      if ! tansu_installed || ! create_topics "$broker"; then
        log "make sure topics $ORDER_EVENTS_TOPIC and $DLQ_TOPIC exist there"
      fi
    fi
    return 0
  fi
  install_tansu
  mkdir -p "$STATE_DIR"
  log "starting Tansu on $broker (log: $STATE_DIR/tansu.log)"
  nohup "$TANSU" broker \
    --listener-url "tcp://$broker" \
    --advertised-listener-url "tcp://$broker" \
    --storage-engine memory://tansu/ \
    >"$STATE_DIR/tansu.log" 2>&1 </dev/null &
  echo $! >"$TANSU_PID"
  for _ in $(seq 1 100); do
    answers "$broker" && break
    tansu_running || die "Tansu exited; see $STATE_DIR/tansu.log"
    sleep 0.1
  done
  answers "$broker" || die "Tansu did not start listening on $broker; see $STATE_DIR/tansu.log"
  # Memory storage forgets topics when the broker restarts: create them at every start.
  create_topics "$broker" || die "cannot create the topics on $broker; see $STATE_DIR/tansu.log"
  log "Kafka-compatible broker (Tansu) ready at $broker"
}

down() {
  if tansu_running; then
    local pid
    pid=$(cat "$TANSU_PID")
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    log "stopped Tansu (pid $pid)"
  else
    log "nothing started by this script is running"
  fi
  rm -f "$TANSU_PID"
}

status() {
  if psql "$PG_ADMIN_URL" -Atqc 'select 1' >/dev/null 2>&1; then log "PostgreSQL: answering"; else log "PostgreSQL: not answering"; fi
  if answers "$(first_broker)"; then log "broker at $(first_broker): answering"; else log "broker at $(first_broker): not answering"; fi
  if tansu_running; then log "Tansu started by this script: pid $(cat "$TANSU_PID")"; fi
}

case "${1:-up}" in
  up) postgres_up; kafka_up ;;
  down) down ;;
  status) status ;;
  install-broker) install_tansu ;;
  *) die "usage: $0 up|down|status|install-broker" ;;
esac
