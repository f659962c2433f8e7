#!/usr/bin/env bash
# What sharing state through Redis costs a request: two ccedge processes serve the same Finesse
# site with authentication in front of the same upstream (nginx, also the validator), one with
# `server.shared_state` (a redis-server on loopback) and one without. wrk sends requests with a
# credential whose verdict is kept (the common path, which must never wait on Redis), in
# alternating rounds, to each; then the same with a rate rule the client passes a quarter of
# (each request then also counts in the share added up every 200 ms).
#
#   bash bench/shared.sh [seconds per round] [rounds] [connections]
#
# Prints per round and as medians: requests per second, p99 latency and ccedge's CPU time per
# request (from /proc), and the on/off ratios. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:-8}
ROUNDS=${2:-4}
CONNECTIONS=${3:-32}
UPSTREAM=28201
REDIS=28202

missing=""
command -v nginx >/dev/null 2>&1 || missing="$missing nginx-light"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
if [ -n "$missing" ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
cargo build --release --bin ccedge >/dev/null 2>&1 || cargo build --release --bin ccedge
BINARY=${CCEDGE_BINARY:-target/release/ccedge}

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
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
pids+=($!)
head -c 32 /dev/urandom > "$work/state.key"
chmod 600 "$work/state.key"

# config NAME PORT SHARED RATE: one site with auth (and a rate rule when RATE is set).
config() {
  local shared=""
  [ "$3" = on ] && shared="  admin:
    listen: 127.0.0.1:$ADMIN
  shared_state:
    redis_url: redis://127.0.0.1:$REDIS/0
    key_file: $work/state.key"
  local rate=""
  [ -n "$4" ] && rate="    rate_limits:
      - {path_prefix: /, per_second: $4, burst: 0}"
  cat <<CONF
server:
  threads: 1
  pid_file: $work/$1.pid
  upgrade_sock: $work/$1.sock
  access_log: "off"
$shared
finesse:
  - name: $1
    bind: 127.0.0.1
    limits: {max_connections_per_ip: 1000}
$rate
    servers:
      - {public: "bench.example.com:$2", upstream: "127.0.0.1:$UPSTREAM", role: other}
    auth:
      validate_url: http://127.0.0.1:$UPSTREAM/finesse/api/UserAuth
CONF
}

credential="Authorization: Basic $(printf 'agent1:secret' | base64)"
host="Host: bench.example.com"
hz=$(getconf CLK_TCK)
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# scenario TITLE RATE BASE: runs both processes (on ports BASE+1, BASE+2, admin BASE+3), ROUNDS
# ABBA rounds.
scenario() {
  local title=$1 rate=$2 off_pid on_pid
  OFF=$(($3 + 1)); ON=$(($3 + 2)); ADMIN=$(($3 + 3))
  config off $OFF off "$rate" > "$work/off.yaml"
  config on $ON on "$rate" > "$work/on.yaml"
  RUST_LOG=warn "$BINARY" -c "$work/off.yaml" 2>"$work/off.err" & off_pid=$!
  RUST_LOG=warn "$BINARY" -c "$work/on.yaml" 2>"$work/on.err" & on_pid=$!
  pids+=("$off_pid" "$on_pid")
  for port in $UPSTREAM $OFF $ON; do
    for _ in $(seq 100); do curl -s -o /dev/null -H "$host" "http://127.0.0.1:$port/" && break; sleep 0.1; done
  done
  # Shared state up before the rounds.
  for _ in $(seq 200); do
    curl -s http://127.0.0.1:$ADMIN/metrics | grep -qx 'ccedge_shared_state_up 1' && break
    sleep 0.1
  done
  curl -s http://127.0.0.1:$ADMIN/metrics | grep -qx 'ccedge_shared_state_up 1' \
    || { echo "shared state never came up"; cat "$work/on.err"; exit 1; }
  ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
  # round PORT PID: "requests/s p99-ms cpu-µs-per-request"
  round() {
    local before after out
    before=$(ticks "$2")
    out=$(wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_EACH}s" --latency -H "$host" -H "$credential" \
      "http://127.0.0.1:$1/finesse/api/User/agent1")
    after=$(ticks "$2")
    awk -v t=$((after - before)) -v hz="$hz" '
      function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; return v * 1000 }
      /requests in/ {n = $1} /Requests\/sec/ {r = $2} /^ +99%/ {p = ms($2)}
      /Non-2xx/ {bad = $5}
      END {if (bad > 0) {print "refused answers: " bad > "/dev/stderr"; exit 1}
           printf "%s %.3f %.1f\n", r, p, t * 1e6 / hz / n}' <<<"$out"
  }
  for port in $OFF $ON; do
    wrk -t1 -c"$CONNECTIONS" -d2s -H "$host" -H "$credential" "http://127.0.0.1:$port/finesse/api/User/agent1" >/dev/null
  done
  local f_r=() f_p=() f_c=() n_r=() n_p=() n_c=() fr fp fc nr np nc
  echo "### $title"
  printf '%-6s %12s %12s %12s %12s %14s %14s\n' round "off r/s" "on r/s" "off p99 ms" "on p99 ms" "off µs/req" "on µs/req"
  for n in $(seq "$ROUNDS"); do
    if [ $((n % 2)) -eq 1 ]; then
      read -r fr fp fc <<<"$(round $OFF "$off_pid")"; read -r nr np nc <<<"$(round $ON "$on_pid")"
    else
      read -r nr np nc <<<"$(round $ON "$on_pid")"; read -r fr fp fc <<<"$(round $OFF "$off_pid")"
    fi
    f_r+=("$fr"); f_p+=("$fp"); f_c+=("$fc"); n_r+=("$nr"); n_p+=("$np"); n_c+=("$nc")
    printf '%-6s %12s %12s %12s %12s %14s %14s\n' "$n" "$fr" "$nr" "$fp" "$np" "$fc" "$nc"
  done
  fr=$(printf '%s\n' "${f_r[@]}" | median); nr=$(printf '%s\n' "${n_r[@]}" | median)
  fp=$(printf '%s\n' "${f_p[@]}" | median); np=$(printf '%s\n' "${n_p[@]}" | median)
  fc=$(printf '%s\n' "${f_c[@]}" | median); nc=$(printf '%s\n' "${n_c[@]}" | median)
  printf '%-6s %12s %12s %12s %12s %14s %14s\n' median "$fr" "$nr" "$fp" "$np" "$fc" "$nc"
  awk -v fr="$fr" -v nr="$nr" -v fp="$fp" -v np="$np" -v fc="$fc" -v nc="$nc" 'BEGIN {
    printf "on/off: throughput %.3f, p99 %.3f, CPU per request %.3f\n\n", nr / fr, np / fp, nc / fc }'
  curl -s http://127.0.0.1:$ADMIN/metrics | grep -qx 'ccedge_shared_state_up 1' \
    || { echo "shared state went down during the rounds"; exit 1; }
  kill "$off_pid" "$on_pid"; wait "$off_pid" "$on_pid" 2>/dev/null || true
}

scenario "a known credential (the common path)" "" 28210
scenario "a known credential past a quarter of its rate limit" 100000 28220
echo "($ROUNDS rounds of $SECONDS_EACH s, $CONNECTIONS connections, 1 wrk thread, 1 ccedge worker each, $(nproc) cores)"
