#!/usr/bin/env bash
# What authentication at the proxy costs: one ccedge serves two Finesse sites in front of the
# same upstream, one without `auth` and one with it (the validator being that upstream too).
# wrk sends the same requests with the same Basic credential to each, in alternating rounds; the
# verdict cache is warm after the first request, so this is the cost every request pays: the
# path check, the keyed hash, the verdict lookup.
#
#   bash bench/auth.sh [seconds per round] [rounds] [connections]
#
# Prints requests per second per round, the medians, and auth/no-auth. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:-8}
ROUNDS=${2:-3}
CONNECTIONS=${3:-32}
UPSTREAM=28101
OPEN=28102
GUARDED=28103

for tool in nginx wrk; do
  command -v "$tool" >/dev/null 2>&1 || {
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get install -y -qq --no-install-recommends nginx-light wrk >/dev/null
    break
  }
done
cargo build --release --bin ccedge >/dev/null 2>&1 || cargo build --release --bin ccedge

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$UPSTREAM;
    location / { return 200 '{"ok":true}'; }
  }
}
CONF
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)

site() {  # name, port, extra
  cat <<CONF
  - name: $1
    bind: 127.0.0.1
    servers:
      - {public: "bench.example.com:$2", upstream: "127.0.0.1:$UPSTREAM", role: other}
$3
CONF
}
{
  cat <<CONF
server:
  threads: 1
  pid_file: $work/ccedge.pid
  upgrade_sock: $work/ccedge.sock
  access_log: "off"
finesse:
CONF
  site open $OPEN ""
  site guarded $GUARDED "    auth:
      validate_url: http://127.0.0.1:$UPSTREAM/finesse/api/UserAuth"
} > "$work/ccedge.yaml"
RUST_LOG=warn target/release/ccedge -c "$work/ccedge.yaml" &
pids+=($!)

credential="Authorization: Basic $(printf 'agent1:secret' | base64)"
for port in $UPSTREAM $OPEN $GUARDED; do
  for _ in $(seq 100); do curl -s -o /dev/null -H "$credential" "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GUARDED/finesse/api/User")
[ "$status" = 401 ] || { echo "auth is not on (got $status without credentials)"; exit 1; }

rps() {
  wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_EACH}s" -H "$credential" \
    "http://127.0.0.1:$1/finesse/api/User/agent1" | awk '/Requests\/sec/ {print $2}'
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

wrk -t1 -c"$CONNECTIONS" -d2s -H "$credential" "http://127.0.0.1:$OPEN/" >/dev/null
wrk -t1 -c"$CONNECTIONS" -d2s -H "$credential" "http://127.0.0.1:$GUARDED/" >/dev/null
open_runs=(); guarded_runs=()
printf '%-6s %14s %14s\n' round "no auth r/s" "auth r/s"
for round in $(seq "$ROUNDS"); do
  o=$(rps $OPEN); g=$(rps $GUARDED)
  open_runs+=("$o"); guarded_runs+=("$g")
  printf '%-6s %14s %14s\n' "$round" "$o" "$g"
done
o=$(printf '%s\n' "${open_runs[@]}" | median)
g=$(printf '%s\n' "${guarded_runs[@]}" | median)
printf '%-6s %14s %14s\n' median "$o" "$g"
awk -v g="$g" -v o="$o" 'BEGIN { printf "\nauth/no-auth throughput: %.3f (cost %.1f%%)\n", g / o, (1 - g / o) * 100 }'
echo "($ROUNDS rounds of $SECONDS_EACH s, $CONNECTIONS connections, 1 wrk thread, 1 ccedge worker, $(nproc) cores)"
