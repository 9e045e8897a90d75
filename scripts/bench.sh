#!/usr/bin/env bash
# The benchmark command: every speed figure beside its ceiling measured in the same run, one
# table on stdout and one JSON file in .local/bench/. A measurement, not a test: it exits 0 when
# a target is missed (the table says so) and 1 only when a row could not be measured.
#
#   scripts/bench.sh                     all rows (not the peer), release build, ~5 minutes
#   scripts/bench.sh --only relay,held   some rows
#   scripts/bench.sh --peer              also the pg-transactional-outbox peer (Node 20)
#   scripts/bench.sh --smoke             tiny sizes, no thresholds, debug binaries (CI)
#   scripts/bench.sh --help              every flag (sizes, offered rate, ...)
#
# Own flags: --profile debug|release (default release; debug with --smoke) picks the binaries;
# --no-build uses them as they are. The services inherit this environment, so their settings
# (e.g. BATCH_SIZE=1000, DB_MAX_CONNECTIONS=20) can be tried without editing anything.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
export SQLX_OFFLINE=${SQLX_OFFLINE:-true}

die() { printf '[bench] error: %s\n' "$*" >&2; exit 2; }

profile=""
build=1
smoke=0
help=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) [ $# -ge 2 ] || die "--profile needs debug or release"; profile=$2; shift 2 ;;
    --profile=*) profile=${1#--profile=}; shift ;;
    --no-build) build=0; shift ;;
    --smoke) smoke=1; args+=("$1"); shift ;;
    -h|--help) help=1; args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -z "$profile" ]; then
  if [ "$smoke" = 1 ]; then profile=debug; else profile=release; fi
fi
case "$profile" in
  debug) cargo_profile=() ;;
  release) cargo_profile=(--release) ;;
  *) die "--profile must be debug or release, not '$profile'" ;;
esac

if [ "$help" = 0 ]; then
  scripts/infra.sh up
fi
if [ "$build" = 1 ]; then
  # The services as the Dockerfile builds them (default features: no test hooks), and the bench.
  packages=(-p order-api -p outbox-relay -p catalog-consumer -p bench)
  printf '[bench] cargo build %s %s\n' "${cargo_profile[*]:-}" "${packages[*]}" >&2
  cargo build "${cargo_profile[@]}" --locked "${packages[@]}"
fi
[ -x "target/$profile/bench" ] || die "target/$profile/bench is missing: run without --no-build"
exec "target/$profile/bench" "${args[@]}"
