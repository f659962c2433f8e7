#!/usr/bin/env bash
# What authentication at the proxy costs: one ccedge serves two Finesse sites in front of the
# same upstream, one without `auth` and one with it (the validator being that upstream too).
# wrk sends the same requests with the same Basic credential to each, in alternating rounds; the
# verdict cache is warm after the first request, so this is the cost every request pays: the
# path check, the keyed hash, the verdict lookup.
#
#   bash bench/auth.sh [seconds per round] [rounds] [connections]
#
# Prints, per round and as medians, requests per second and ccedge's CPU time per request (from
# /proc, steadier than throughput on a shared machine), and the auth/no-auth ratios. Loopback only.
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
RUST_LOG=warn target/release/ccedge -c "$work/ccedge.yaml" 2>"$work/ccedge.err" &
pids+=($!)

credential="Authorization: Basic $(printf 'agent1:secret' | base64)"
host="Host: bench.example.com"
for port in $UPSTREAM $OPEN $GUARDED; do
  for _ in $(seq 100); do curl -s -o /dev/null -H "$host" "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
status=$(curl -s -o /dev/null -w '%{http_code}' -H "$host" "http://127.0.0.1:$GUARDED/finesse/api/User")
[ "$status" = 401 ] || { echo "auth is not on (got $status without credentials)"; exit 1; }

ccedge_pid=${pids[1]}
ticks() { awk '{print $14 + $15}' "/proc/$ccedge_pid/stat"; }
hz=$(getconf CLK_TCK)
# One round against port $1: "requests/s cpu-µs-per-request" (ccedge's own CPU time, from /proc).
round() {
  local before after out
  before=$(ticks)
  out=$(wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_EACH}s" -H "$host" -H "$credential" \
    "http://127.0.0.1:$1/finesse/api/User/agent1")
  after=$(ticks)
  awk -v t=$((after - before)) -v hz="$hz" '
    /requests in/ {n = $1} /Requests\/sec/ {r = $2}
    END {printf "%s %.1f\n", r, t * 1e6 / hz / n}' <<<"$out"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

for port in $OPEN $GUARDED; do
  wrk -t1 -c"$CONNECTIONS" -d2s -H "$host" -H "$credential" "http://127.0.0.1:$port/x" >/dev/null
done
o_rps=(); g_rps=(); o_cpu=(); g_cpu=()
printf '%-6s %14s %14s %16s %16s\n' round "no auth r/s" "auth r/s" "no auth µs/req" "auth µs/req"
for n in $(seq "$ROUNDS"); do
  # ABBA order, so that a drift of the machine during a round favours neither.
  if [ $((n % 2)) -eq 1 ]; then
    read -r or oc <<<"$(round $OPEN)"; read -r gr gc <<<"$(round $GUARDED)"
  else
    read -r gr gc <<<"$(round $GUARDED)"; read -r or oc <<<"$(round $OPEN)"
  fi
  o_rps+=("$or"); g_rps+=("$gr"); o_cpu+=("$oc"); g_cpu+=("$gc")
  printf '%-6s %14s %14s %16s %16s\n' "$n" "$or" "$gr" "$oc" "$gc"
done
or=$(printf '%s\n' "${o_rps[@]}" | median); gr=$(printf '%s\n' "${g_rps[@]}" | median)
oc=$(printf '%s\n' "${o_cpu[@]}" | median); gc=$(printf '%s\n' "${g_cpu[@]}" | median)
printf '%-6s %14s %14s %16s %16s\n' median "$or" "$gr" "$oc" "$gc"
awk -v gr="$gr" -v or="$or" -v gc="$gc" -v oc="$oc" 'BEGIN {
  printf "\nauth/no-auth: throughput %.3f, CPU per request %.3f (cost %.1f%%)\n", gr / or, gc / oc, (gc / oc - 1) * 100 }'
echo "($ROUNDS rounds of $SECONDS_EACH s, $CONNECTIONS connections, 1 wrk thread, 1 ccedge worker, $(nproc) cores)"
