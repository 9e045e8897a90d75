#!/usr/bin/env bash
# Local infrastructure for development and tests, idempotent:
#   scripts/infra.sh up      PostgreSQL checked (orders + catalog databases created),
#                            a Kafka-protocol broker at KAFKA_BROKERS (nisshi installed and
#                            started when none answers), topics created.
#   scripts/infra.sh down    stops only what `up` started (the pid file in .local/).
#   scripts/infra.sh status  says what answers.
#   scripts/infra.sh install-broker   installs the pinned nisshi only.
#
# BROKER_STORAGE=memory (default: tests and benchmarks, fastest, forgets everything when it
# stops) or durable (scripts/run.sh: SQLite under .local/broker/, so stopping and starting the
# local system loses no event). A broker this script started with memory storage is restarted
# when durable storage is asked for.
#
# Why nisshi 0.8.1: Tansu 0.6.0, the broker used before, did not evict consumer-group members
# that died without leaving, so a crashed consumer's partitions stayed assigned to nobody;
# nisshi (Tansu's successor) evicts them after the session timeout, as Kafka does.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE_DIR="$ROOT/.local"
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
ORDER_EVENTS_TOPIC=${ORDER_EVENTS_TOPIC:-order-events}
DLQ_TOPIC=${DLQ_TOPIC:-order-events.dlq}
TOPIC_PARTITIONS=${TOPIC_PARTITIONS:-6}
BROKER_STORAGE=${BROKER_STORAGE:-memory}
NISSHI_VERSION=0.8.1
# Outside the work tree, so a fresh clone reuses the (15-25 minute) build.
NISSHI_ROOT=${NISSHI_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox-nisshi}
NISSHI="$NISSHI_ROOT/bin/nisshi"
NISSHI_PID="$STATE_DIR/nisshi.pid"
# The storage the running broker was started with (memory or durable).
NISSHI_STORAGE_FILE="$STATE_DIR/nisshi.storage"

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

nisshi_installed() {
  [ -x "$NISSHI" ] || return 1
  # Read the whole answer first: `grep -q` closing the pipe early would fail the check.
  local version
  version=$("$NISSHI" --version 2>/dev/null) || return 1
  [ "$version" = "nisshi $NISSHI_VERSION" ]
}

install_nisshi() {
  nisshi_installed && return 0
  command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) to build the local broker"
  log "installing nisshi $NISSHI_VERSION into $NISSHI_ROOT (once; about 15-25 minutes on 2 cores)"
  mkdir -p "$NISSHI_ROOT"
  # Its crates declare Rust 1.96; they build and run with 1.95.
  cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
    --root "$NISSHI_ROOT" --force >&2
  nisshi_installed || die "nisshi was not installed at $NISSHI"
}

# true when the pid file names a live nisshi process (not a recycled pid)
nisshi_running() {
  [ -f "$NISSHI_PID" ] || return 1
  local pid
  pid=$(cat "$NISSHI_PID")
  kill -0 "$pid" 2>/dev/null && [ "$(ps -p "$pid" -o comm= 2>/dev/null)" = nisshi ]
}

create_topics() {
  local broker=$1
  for topic in "$ORDER_EVENTS_TOPIC" "$DLQ_TOPIC"; do
    local out
    if out=$("$NISSHI" topic create "$topic" --broker "tcp://$broker" --partitions "$TOPIC_PARTITIONS" 2>&1); then
      log "created topic $topic ($TOPIC_PARTITIONS partitions)"
    elif grep -qi 'exist' <<<"$out"; then
      :
    else
      log "cannot create topic $topic: $out"
      return 1
    fi
  done
}

storage_url() {
  case "$BROKER_STORAGE" in
    memory) echo "memory://nisshi/" ;;
    # Relative to the broker's working directory, $STATE_DIR/broker.
    durable) echo "sqlite://nisshi.db" ;;
    *) die "BROKER_STORAGE must be memory or durable, not '$BROKER_STORAGE'" ;;
  esac
}

kafka_up() {
  local broker url
  broker=$(first_broker)
  url=$(storage_url)
  if nisshi_running && [ "$BROKER_STORAGE" = durable ] &&
    [ "$(cat "$NISSHI_STORAGE_FILE" 2>/dev/null)" != durable ]; then
    log "the running broker keeps nothing on disk; restarting it with durable storage"
    down
  fi
  if answers "$broker"; then
    if nisshi_running; then
      create_topics "$broker" || die "the topics are missing on $broker"
    else
      log "using the broker already answering at $broker"
      if ! nisshi_installed || ! create_topics "$broker"; then
        log "make sure topics $ORDER_EVENTS_TOPIC and $DLQ_TOPIC exist there"
      fi
    fi
    return 0
  fi
  install_nisshi
  mkdir -p "$STATE_DIR/broker"
  log "starting nisshi on $broker, $BROKER_STORAGE storage (log: $STATE_DIR/nisshi.log)"
  (
    cd "$STATE_DIR/broker"
    # Its info level logs every storage maintenance step; warnings are what an operator needs.
    RUST_LOG=${NISSHI_LOG:-warn} exec nohup "$NISSHI" broker \
      --listener-url "tcp://$broker" \
      --advertised-listener-url "tcp://$broker" \
      --storage-engine "$url" \
      >"$STATE_DIR/nisshi.log" 2>&1 </dev/null
  ) &
  echo $! >"$NISSHI_PID"
  echo "$BROKER_STORAGE" >"$NISSHI_STORAGE_FILE"
  for _ in $(seq 1 300); do
    answers "$broker" && break
    # kill -0 only: until the subshell has exec'ed, the process is not named nisshi yet.
    kill -0 "$(cat "$NISSHI_PID")" 2>/dev/null || die "nisshi exited; see $STATE_DIR/nisshi.log"
    sleep 0.1
  done
  answers "$broker" || die "nisshi did not start listening on $broker; see $STATE_DIR/nisshi.log"
  # Memory storage forgets topics when the broker restarts: create them at every start.
  create_topics "$broker" || die "cannot create the topics on $broker; see $STATE_DIR/nisshi.log"
  log "Kafka-compatible broker (nisshi $NISSHI_VERSION) ready at $broker"
}

down() {
  if nisshi_running; then
    local pid
    pid=$(cat "$NISSHI_PID")
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    log "stopped nisshi (pid $pid)"
  else
    log "nothing started by this script is running"
  fi
  rm -f "$NISSHI_PID" "$NISSHI_STORAGE_FILE"
}

status() {
  if psql "$PG_ADMIN_URL" -Atqc 'select 1' >/dev/null 2>&1; then log "PostgreSQL: answering"; else log "PostgreSQL: not answering"; fi
  if answers "$(first_broker)"; then log "broker at $(first_broker): answering"; else log "broker at $(first_broker): not answering"; fi
  if nisshi_running; then log "nisshi started by this script: pid $(cat "$NISSHI_PID"), $(cat "$NISSHI_STORAGE_FILE" 2>/dev/null) storage"; fi
}

case "${1:-up}" in
  up) postgres_up; kafka_up ;;
  down) down ;;
  status) status ;;
  install-broker) install_nisshi ;;
  broker-path) echo "$NISSHI" ;;
  *) die "usage: $0 up|down|status|install-broker|broker-path" ;;
esac
