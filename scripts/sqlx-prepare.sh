#!/usr/bin/env bash
# The checked queries (sqlx `query!` macros) are verified at compile time against a database
# with the schema; the result is committed as offline data (`.sqlx/` in each service crate), so
# builds need no database. This script regenerates that data against fresh databases migrated
# from migrations/:
#   scripts/sqlx-prepare.sh          rewrite order-api/.sqlx, outbox-relay/.sqlx, catalog-consumer/.sqlx
#   scripts/sqlx-prepare.sh --check  fail when the committed data differs from the queries
#   scripts/sqlx-prepare.sh [--check] CRATE...  only these crates
# The scratch databases are named after this run's pid, so two runs never share one.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
PG_BASE=${PG_ADMIN_URL%/*}
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
check=false
[ "${1:-}" = --check ] && { check=true; shift; }
crates=("$@")
[ ${#crates[@]} -eq 0 ] && crates=(order-api outbox-relay catalog-consumer)

fresh_database() {
  local name=$1 migrations=$2
  psql "$PG_ADMIN_URL" -q -v ON_ERROR_STOP=1 -c "drop database if exists $name with (force)" -c "create database $name"
  for file in migrations/"$migrations"/*.sql; do
    psql "$PG_BASE/$name" -q -v ON_ERROR_STOP=1 -f "$file" >/dev/null
  done
}

orders_db=outbox_sqlx_orders_$$
catalog_db=outbox_sqlx_catalog_$$
cleanup() {
  psql "$PG_ADMIN_URL" -q -c "drop database if exists $orders_db with (force)" \
    -c "drop database if exists $catalog_db with (force)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
fresh_database "$orders_db" orders
fresh_database "$catalog_db" catalog

status=0
for crate in "${crates[@]}"; do
  case $crate in
    order-api | outbox-relay) database=$orders_db ;;
    catalog-consumer) database=$catalog_db ;;
    *) echo "[sqlx] unknown crate $crate (order-api, outbox-relay, catalog-consumer)" >&2; exit 2 ;;
  esac
  if $check; then out=$(mktemp -d); else out="$ROOT/$crate/.sqlx"; rm -rf "$out"; mkdir -p "$out"; fi
  # Touching the crate makes cargo expand its macros again, now online.
  touch "$crate/src/lib.rs"
  SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$out" DATABASE_URL="$PG_BASE/$database" \
    cargo check --quiet --locked -p "$crate" --lib
  if $check; then
    if ! diff -r "$out" "$crate/.sqlx" >/dev/null 2>&1; then
      echo "[sqlx] $crate/.sqlx is out of date: run scripts/sqlx-prepare.sh and commit the result" >&2
      diff -r "$out" "$crate/.sqlx" >&2 || true
      status=1
    fi
    rm -rf "$out"
  fi
  touch "$crate/src/lib.rs"
done
$check && [ $status -eq 0 ] && echo "[sqlx] offline query data is up to date" >&2
exit $status
