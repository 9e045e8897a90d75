#!/usr/bin/env bash
# A real outside client fuzzes order-api's generated OpenAPI document: schemathesis (PyPI,
# pinned) runs every check (no 5xx, status codes, headers and bodies as documented, 405s with
# Allow, ...) with 50 examples per operation against the built order-api on a fresh database.
#
#   scripts/schemathesis.sh [debug|release]     (default debug; build the binaries first)
#
# schemathesis is installed once into ~/.cache/outbox-schemathesis (a virtualenv).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PROFILE=${1:-debug}
VERSION=4.32.5
VENV=${SCHEMATHESIS_VENV:-$HOME/.cache/outbox-schemathesis}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
say() { printf '[schemathesis] %s\n' "$*" >&2; }

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$VERSION"; then
  say "installing schemathesis $VERSION into $VENV (once)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "schemathesis==$VERSION"
fi

binary="target/$PROFILE/order-api"
[ -x "$binary" ] || { say "$binary is missing: cargo build --workspace --bins first"; exit 2; }
database="outbox_test_schemathesis_$$"
psql "$PG_ADMIN_URL" -qc "create database $database"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
HTTP_ADDR="127.0.0.1:$port" DATABASE_URL="${PG_ADMIN_URL%/*}/$database" RUST_LOG=warn \
  "$binary" > "$log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  psql "$PG_ADMIN_URL" -qc "drop database if exists $database with (force)" || true
  rm -f "$log"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$port/readyz" > /dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; say "order-api exited"; exit 1; }
  sleep 0.2
done
say "fuzzing order-api at 127.0.0.1:$port"
status=0
"$VENV/bin/schemathesis" --config-file scripts/schemathesis.toml --no-color \
  run "http://127.0.0.1:$port/openapi.json" \
  --checks all --max-examples 50 --seed 1 || status=$?
# Errors our code logged (a 500, a panic); actix's HTTP parser logs the malformed requests it
# refuses with 400 before any handler runs, which is what a fuzzer sends.
errors=$(grep '"level":"ERROR"' "$log" | grep -v '"target":"actix_http::h1::dispatcher"' || true)
if [ -n "$errors" ]; then
  say "order-api logged errors while being fuzzed:"
  printf '%s\n' "$errors" | head -20 >&2
  status=1
fi
exit $status
