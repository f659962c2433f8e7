#!/usr/bin/env bash
# Benchmark: ccedge against nginx on this machine, same upstream, same load generator.
#
#   bash bench/run.sh [seconds] [connections]
#
# Both proxies run one worker, forward plain HTTP/1.1 keep-alive requests to the same upstream
# (an nginx answering a small body), set the same forwarding headers, and write no access log.
# wrk drives each in turn; the report gives requests per second, latency, and ccedge/nginx ratios.
# Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:-10}
CONNECTIONS=${2:-50}
UPSTREAM=28001
NGINX=28002
CCEDGE=28003
STANDBY=28004

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
  server_tokens off;
  upstream backend { server 127.0.0.1:$UPSTREAM; keepalive 128; }
  server {
    listen 127.0.0.1:$UPSTREAM;
    listen 127.0.0.1:$STANDBY;
    location / { return 200 '{"ok":true}'; }
  }
  server {
    listen 127.0.0.1:$NGINX;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host dc.example.com:443;
      proxy_set_header X-Client-IP \$remote_addr;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For "\$remote_addr, \$server_addr";
      proxy_set_header X-Forwarded-Port 443;
      proxy_set_header X-Forwarded-Proto http;
      proxy_set_header TrackingID \$request_id;
      add_header TrackingID \$request_id;
      proxy_hide_header Server;
    }
  }
}
CONF
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)

cat > "$work/ccedge.yaml" <<CONF
server:
  threads: 1
  pid_file: $work/ccedge.pid
  upgrade_sock: $work/ccedge.sock
  access_log: "off"
digital_channels:
  - name: bench
    listen: 127.0.0.1:$CCEDGE
    public: dc.example.com:443
    publisher: 127.0.0.1:$UPSTREAM
    subscriber: 127.0.0.1:$STANDBY
    rate_limits: []
CONF
RUST_LOG=warn target/release/ccedge -c "$work/ccedge.yaml" &
pids+=($!)

for port in $UPSTREAM $NGINX $CCEDGE; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done

run() {
  local out
  out=$(wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_EACH}s" --latency "http://127.0.0.1:$1/drapi/v1/tasks")
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  echo "$rps $p50 $p99"
}

wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$NGINX/" >/dev/null
wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$CCEDGE/" >/dev/null
read -r n_rps n_p50 n_p99 <<<"$(run $NGINX)"
read -r c_rps c_p50 c_p99 <<<"$(run $CCEDGE)"

printf '\n%-8s %12s %10s %10s\n' proxy "requests/s" p50 p99
printf '%-8s %12s %10s %10s\n' nginx "$n_rps" "$n_p50" "$n_p99"
printf '%-8s %12s %10s %10s\n' ccedge "$c_rps" "$c_p50" "$c_p99"
awk -v c="$c_rps" -v n="$n_rps" 'BEGIN { printf "\nccedge/nginx throughput: %.2f\n", c / n }'
echo "($SECONDS_EACH s each, $CONNECTIONS connections, 1 wrk thread, 1 proxy worker, $(nproc) cores)"
