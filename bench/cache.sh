#!/usr/bin/env bash
# Cache hits: ccedge's static cache against nginx's proxy_cache, both in front of the same origin
# (an nginx serving a cacheable file), both with one worker, no access log, the file already
# cached. wrk asks each in turn, in ABBA-ordered rounds; the report gives requests per second,
# each proxy's CPU time per request (from /proc), the medians and the ccedge/nginx ratios.
#
#   bash bench/cache.sh [seconds per round] [rounds] [connections] [body bytes]
#
# Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:-6}
ROUNDS=${2:-4}
CONNECTIONS=${3:-32}
BODY=${4:-4096}
ORIGIN=28201
NGINX=28202
CCEDGE=28203

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

mkdir -p "$work/files/desktop" "$work/cache"
head -c "$BODY" /dev/zero | tr '\0' 'x' > "$work/files/desktop/app.js"

# The workers run as this user, so that they can use the private temporary folder.
nginx_conf() {  # name, body of the http block
  cat > "$work/$1.conf" <<CONF
user $(id -un);
worker_processes 1;
daemon off;
pid $work/$1.pid;
error_log $work/$1-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server_tokens off;
$2
}
CONF
}
nginx_conf origin "  server {
    listen 127.0.0.1:$ORIGIN;
    root $work/files;
    location / { add_header Cache-Control \"max-age=3600\"; }
  }"
nginx_conf front "  proxy_cache_path $work/cache keys_zone=desktop:16m max_size=256m;
  server {
    listen 127.0.0.1:$NGINX;
    location / {
      proxy_pass http://127.0.0.1:$ORIGIN;
      proxy_cache desktop;
      proxy_cache_key \$host\$request_uri;
      proxy_cache_revalidate on;
      proxy_cache_lock on;
      proxy_cache_use_stale error timeout updating;
      proxy_cache_background_update on;
      proxy_set_header Host finesse1.example.com:443;
      add_header TrackingID \$request_id;
      add_header X-Cache \$upstream_cache_status;
    }
  }"
nginx -c "$work/origin.conf" -p "$work" &
pids+=($!)
nginx -c "$work/front.conf" -p "$work" &
pids+=($!)
nginx_pid=$!

cat > "$work/ccedge.yaml" <<CONF
server:
  threads: 1
  pid_file: $work/ccedge.pid
  upgrade_sock: $work/ccedge.sock
  access_log: "off"
finesse:
  - name: bench
    bind: 127.0.0.1
    servers:
      - {public: "bench.example.com:$CCEDGE", upstream: "127.0.0.1:$ORIGIN", role: other}
    cache:
      max_size_mb: 256
CONF
RUST_LOG=warn target/release/ccedge -c "$work/ccedge.yaml" 2>"$work/ccedge.err" &
pids+=($!)
ccedge_pid=$!

host="Host: bench.example.com"
for port in $ORIGIN $NGINX $CCEDGE; do
  for _ in $(seq 100); do curl -s -o /dev/null -H "$host" "http://127.0.0.1:$port/desktop/app.js" && break; sleep 0.1; done
done
curl -s -o /dev/null -H "$host" "http://127.0.0.1:$NGINX/desktop/app.js"
n_cache=$(curl -s -D - -o /dev/null -H "$host" "http://127.0.0.1:$NGINX/desktop/app.js" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache" {print $2}')
curl -s -D - -o /dev/null -H "$host" "http://127.0.0.1:$NGINX/desktop/app.js"; cat $work/front-error.log; [ "$n_cache" = HIT ] || { echo "nginx does not serve from its cache (X-Cache: $n_cache)"; exit 1; }

hz=$(getconf CLK_TCK)
# One round against proxy $1 (port) with process $2: "requests/s cpu-µs-per-request".
round() {
  local before after out
  before=$(awk '{print $14 + $15}' "/proc/$2/stat")
  out=$(wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_EACH}s" -H "$host" "http://127.0.0.1:$1/desktop/app.js")
  after=$(awk '{print $14 + $15}' "/proc/$2/stat")
  awk -v t=$((after - before)) -v hz="$hz" '
    /requests in/ {n = $1} /Requests\/sec/ {r = $2}
    END {printf "%s %.1f\n", r, t * 1e6 / hz / n}' <<<"$out"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# nginx's master forks the worker: measure the worker.
nginx_worker=$(pgrep -P "$nginx_pid" | head -1)
wrk -t1 -c"$CONNECTIONS" -d2s -H "$host" "http://127.0.0.1:$NGINX/desktop/app.js" >/dev/null
wrk -t1 -c"$CONNECTIONS" -d2s -H "$host" "http://127.0.0.1:$CCEDGE/desktop/app.js" >/dev/null
n_rps=(); c_rps=(); n_cpu=(); c_cpu=()
printf '%-6s %14s %14s %16s %16s\n' round "nginx r/s" "ccedge r/s" "nginx µs/req" "ccedge µs/req"
for n in $(seq "$ROUNDS"); do
  if [ $((n % 2)) -eq 1 ]; then
    read -r nr nc <<<"$(round $NGINX "$nginx_worker")"; read -r cr cc <<<"$(round $CCEDGE "$ccedge_pid")"
  else
    read -r cr cc <<<"$(round $CCEDGE "$ccedge_pid")"; read -r nr nc <<<"$(round $NGINX "$nginx_worker")"
  fi
  n_rps+=("$nr"); c_rps+=("$cr"); n_cpu+=("$nc"); c_cpu+=("$cc")
  printf '%-6s %14s %14s %16s %16s\n' "$n" "$nr" "$cr" "$nc" "$cc"
done
nr=$(printf '%s\n' "${n_rps[@]}" | median); cr=$(printf '%s\n' "${c_rps[@]}" | median)
nc=$(printf '%s\n' "${n_cpu[@]}" | median); cc=$(printf '%s\n' "${c_cpu[@]}" | median)
printf '%-6s %14s %14s %16s %16s\n' median "$nr" "$cr" "$nc" "$cc"
awk -v cr="$cr" -v nr="$nr" -v cc="$cc" -v nc="$nc" 'BEGIN {
  printf "\nccedge/nginx cache hits: throughput %.2f, CPU per request %.2f\n", cr / nr, cc / nc }'
echo "($ROUNDS rounds of $SECONDS_EACH s, $CONNECTIONS connections, $BODY-byte file, 1 wrk thread, 1 worker each, $(nproc) cores)"
