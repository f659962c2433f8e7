#!/usr/bin/env bash
# Agents per core: N simulated Finesse desktops (bench/agents/) sign in through ccedge within a
# shift start, then poll and hold their notification WebSocket; loopback only, bounded in time.
#
#   bash bench/agents.sh [agents] [ramp seconds] [steady seconds] [seconds between state changes]
#
# Prints the simulator's JSON line (sign-in p50/p99 at shift start, REST p99 in steady state,
# failures, events) and ccedge's CPU seconds per agent-hour and memory per signed-in agent.
# CCEDGE and AGENTS name other builds of ccedge and of the simulator (default: release builds).
set -euo pipefail
cd "$(dirname "$0")/.."

AGENTS=${1:-200}
RAMP=${2:-60}
STEADY=${3:-60}
CHANGE=${4:-100}
EVENTS=${EVENTS:-30}
ORIGIN=28201
PORT=28202
HOST=finesse1.example.com

# ccedge as it ships (release, built alone so that the simulator's dependencies change nothing
# in it); the simulator with the quicker profile.
if [ -z "${CCEDGE:-}" ]; then
  cargo build --release --bin ccedge >/dev/null 2>&1 || cargo build --release --bin ccedge
fi
if [ -z "${AGENTS_BIN:-}" ]; then
  cargo build --profile quick --example agents >/dev/null 2>&1 \
    || cargo build --profile quick --example agents
fi
for tool in nginx curl; do
  command -v "$tool" >/dev/null 2>&1 || missing=1
done
[ -e /usr/lib/nginx/modules/ngx_http_lua_module.so ] || missing=1
if [ -n "${missing:-}" ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get install -y -qq --no-install-recommends nginx-light libnginx-mod-http-lua curl >/dev/null
fi
CCEDGE=${CCEDGE:-target/release/ccedge}
AGENTS_BIN=${AGENTS_BIN:-target/quick/examples/agents}

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

"$AGENTS_BIN" certs "$work" "$HOST"
# nginx's workers (nobody, when started as root) write its cache.
chmod 755 "$work"
mkdir -m 777 "$work/nginx-cache"
"$AGENTS_BIN" origin "$ORIGIN" "$EVENTS" &
pids+=($!)

# ccedge: authentication at the edge, the static cache, the header policy.
cat > "$work/ccedge.yaml" <<CONF
server:
  threads: 1
  pid_file: $work/ccedge.pid
  upgrade_sock: $work/ccedge.sock
  access_log: "off"
finesse:
  - name: desktop
    bind: 127.0.0.1
    tls:
      cert: $work/proxy.crt
      key: $work/proxy.key
    servers:
      - {public: "$HOST:$PORT", upstream: "127.0.0.1:$ORIGIN", role: finesse}
    cache:
      max_size_mb: 64
    auth:
      validate_url: http://127.0.0.1:$ORIGIN/finesse/api/UserAuth
    rate_limits: []
    limits:
      max_connections_per_ip: 0             # every simulated agent comes from 127.0.0.1
CONF

# The vendor's design: nginx + Lua, each request authenticated from a shared-dict verdict cache
# (the validator asked on a miss, the credential after `xmpp` for a WebSocket),
# proxy_cache for the desktop's files, WebSocket proxying, the same forwarding headers.
cat > "$work/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 1;
worker_rlimit_nofile $(ulimit -n);
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 60000; }
http {
  access_log off;
  lua_shared_dict verdicts 50m;
  proxy_cache_path $work/nginx-cache levels=1:2 keys_zone=desktop:10m max_size=64m inactive=60m use_temp_path=off;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  upstream finesse { server 127.0.0.1:$ORIGIN; keepalive 128; }
  server {
    listen 127.0.0.1:$PORT ssl http2;
    server_name $HOST;
    ssl_certificate $work/proxy.crt;
    ssl_certificate_key $work/proxy.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets off;
    proxy_http_version 1.1;
    proxy_set_header Host \$host:\$server_port;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    proxy_set_header X-Real-IP \$remote_addr;
    proxy_set_header X-Forwarded-Proto \$scheme;
    proxy_set_header X-Forwarded-Port \$server_port;
    location /desktop/ {
      proxy_cache desktop;
      proxy_cache_valid 200 24h;
      proxy_cache_lock on;
      proxy_cache_revalidate on;
      proxy_set_header Connection "";
      proxy_pass http://finesse;
    }
    location / {
      access_by_lua_block {
        local auth = ngx.var.http_authorization
        if not auth then
          local token = (ngx.var.http_sec_websocket_protocol or ""):match("^%s*xmpp%s*,%s*([^,%s]+)")
          if not token then return ngx.exit(401) end
          token = token:gsub("%-", "+"):gsub("_", "/")
          token = token .. string.rep("=", (4 - #token % 4) % 4)
          auth = "Basic " .. token
          ngx.req.set_header("Authorization", auth)
        end
        local verdicts = ngx.shared.verdicts
        local key = ngx.md5(auth)
        if verdicts:get(key) then return end
        -- The validator over a pooled cosocket (lua-resty-http's way: no subrequests on HTTP/2).
        local sock = ngx.socket.tcp()
        sock:settimeout(3000)
        if not sock:connect("127.0.0.1", $ORIGIN) then return ngx.exit(503) end
        sock:send("GET /finesse/api/UserAuth HTTP/1.1\\r\\nHost: finesse\\r\\nAuthorization: " .. auth .. "\\r\\n\\r\\n")
        local status = tonumber(((sock:receive("*l")) or ""):match("^HTTP/%d%.%d (%d+)"))
        local length = 0
        while true do
          local line = sock:receive("*l")
          if not line or line == "" then break end
          length = tonumber(line:lower():match("^content%-length:%s*(%d+)")) or length
        end
        if length > 0 then sock:receive(length) end
        sock:setkeepalive(60000, 128)
        if status ~= 200 then return ngx.exit(401) end
        verdicts:set(key, true, 900)
      }
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 3600s;
      proxy_pass http://finesse;
    }
  }
}
CONF

# One run against the proxy started by "$@": the simulator's line and a summary.
measure() {
  local name=$1 proxy idle result
  shift
  "$@" 2>"$work/$name.err" &
  proxy=$!
  pids+=("$proxy")
  for _ in $(seq 100); do
    curl -s -o /dev/null --cacert "$work/ca.crt" --resolve "$HOST:$PORT:127.0.0.1" \
      "https://$HOST:$PORT/desktop/container/" && break
    sleep 0.1
  done
  # nginx serves from its worker; ccedge from itself.
  local worker
  worker=$(pgrep -P "$proxy" -f "worker process" || echo "$proxy")
  idle=$(awk '/VmRSS/ {print $2}' "/proc/$worker/status")
  result=$("$AGENTS_BIN" run "$PORT" "$HOST" "$work/ca.crt" "$AGENTS" "$RAMP" "$STEADY" "$CHANGE" "$worker")
  kill "$proxy"; wait "$proxy" 2>/dev/null || true
  cat "$work/$name.err" "$work/nginx-error.log" 2>/dev/null | grep -v "^$" | tail -8 >&2 || true
  python3 - "$name" "$result" "$idle" "$AGENTS" "$RAMP" "$STEADY" <<'PY'
import json, sys
name, r, idle, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
hours = (int(sys.argv[5]) + int(sys.argv[6])) / 3600
print(f"| {name} | {r['signed_in']}/{n} | {r['failures']} | {r['sign_in_p50_ms']:.0f} / {r['sign_in_p99_ms']:.0f} "
      f"| {r['rest_p50_ms']:.1f} / {r['rest_p99_ms']:.1f} | {r['proxy_cpu_s'] / (n * hours):.2f} "
      f"| {(r['proxy_rss_kib'] - idle) / max(r['signed_in'], 1):.0f} |")
PY
}

echo "$AGENTS agents signing in over ${RAMP}s, then ${STEADY}s more; a state change every ${CHANGE}s, an event every ${EVENTS}s"
echo
echo "| proxy | signed in | failures | sign-in ms p50 / p99 | REST ms p50 / p99 | CPU s per agent-hour | KiB per agent |"
echo "|---|---|---|---|---|---|---|"
measure ccedge env RUST_LOG=warn "$CCEDGE" -c "$work/ccedge.yaml"
measure "nginx + Lua" nginx -c "$work/nginx.conf" -p "$work"
