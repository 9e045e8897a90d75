#!/usr/bin/env bash
# Every check, on a fresh machine: infrastructure, formatting, lints, all tests against the
# real PostgreSQL and the real broker. `.ci/run` calls exactly this.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
export TEST_DATABASE_URL=${TEST_DATABASE_URL:-$PG_ADMIN_URL}
export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
export RUST_LOG=${RUST_LOG:-warn}

step() { printf '\n==> %s\n' "$*" >&2; }

step "infrastructure"
scripts/infra.sh up

step "dropping databases left by earlier test runs"
psql "$PG_ADMIN_URL" -Atc "select datname from pg_database where datname like 'outbox\_test\_%'" |
  while read -r db; do psql "$PG_ADMIN_URL" -qc "drop database if exists \"$db\" with (force)"; done

step "checked queries: offline data matches the queries and the migrations"
scripts/sqlx-prepare.sh --check
# From here on the query macros use only the committed offline data, as any build does.
export SQLX_OFFLINE=true

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The testcontainers path is for machines with a Docker engine; here it is compiled, not run.
cargo clippy -p testkit --features containers --locked -- -D warnings

step "cargo test"
mkdir -p .local
cargo test --workspace --exclude system-tests --locked -- --test-threads "${TEST_THREADS:-8}" 2>&1 |
  tee .local/test-output.log

step "schemathesis: an outside client fuzzes order-api's generated OpenAPI document"
scripts/schemathesis.sh debug

# The system tests run alone, after the rest: the chaos test needs the machine's cores, and
# several run a broker of their own (the pinned nisshi, which the chaos test pauses). Cargo
# builds the services' binaries for them (system-tests' own `[[bin]]`s, without test hooks).
scripts/infra.sh install-broker
export NISSHI_BIN=${NISSHI_BIN:-$(scripts/infra.sh broker-path)}
# --nocapture: its summary (orders, retries, faults, time to converge) goes to the log.
cargo test -p system-tests --locked -- --nocapture 2>&1 | tee -a .local/test-output.log
# One closing line for the whole run (cargo's own last line is that of the last test binary).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "\nsummary: %d passed, %d failed\n", passed, failed }' \
  .local/test-output.log

step "benchmark smoke run"
# Tiny sizes, no thresholds, debug binaries built as a release build would be (no test hooks):
# proves every row still runs.
scripts/bench.sh --smoke
