#!/usr/bin/env bash
# Seal commit latency, SQLite vs PostgreSQL (docs/deployment.md), on an empty
# history and with HISTORY reports already in the tap (sigma_store_bench): a
# fresh SQLite file and a fresh local PostgreSQL cluster (initdb + pg_ctl in a
# temporary directory, fsync on, as the postgres user when run as root), both
# on this machine's disk.
# Usage: bench/store/run_store_bench.sh [BUILD_DIR] [COMMITS] [HISTORY]
set -euo pipefail
cd "$(dirname "$0")/../.."
build="${1:-build}"
commits="${2:-300}"
history="${3:-5000}"
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "PostgreSQL not installed (make deps)"; exit 1; }
dir=$(mktemp -d /tmp/sigma-store-bench-XXXXXX)
chmod 755 "$dir"
as=()
if [ "$(id -u)" = 0 ]; then as=(runuser -u postgres --); chown postgres "$dir"; fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT
"${as[@]}" "$bin/initdb" -D "$dir/data" -A trust -U sigma >/dev/null
"${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=''" start >/dev/null
"$build/bench/store/sigma_store_bench" --commits "$commits" --history "$history" "$dir/sqlite.db" \
  "postgresql://sigma@127.0.0.1:$port/postgres"
