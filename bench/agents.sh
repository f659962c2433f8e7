#!/usr/bin/env bash
# Agents per core: N simulated Finesse desktops (bench/agents/) sign in within a shift start, then
# poll and hold their notification WebSocket, through ccedge, through the vendor's design (nginx +
# Lua, a verdict per credential) and through plain nginx (no authentication); one worker each,
# loopback only, bounded in time. Each agent has its own loopback address.
#
#   bash bench/agents.sh [agents] [ramp s] [steady s] [s between state changes]
#       one table row per proxy: agents signed in, failures, new connections for REST calls
#       after the proxy closed an idle one (its keep-alive timeout), sign-in p50/p99 at shift start,
#       REST p50/p99 after sign-in, CPU seconds per agent-hour (the whole run, then steady state
#       only), resident MiB and KiB per signed-in agent, the simulator's own cores
#   bash bench/agents.sh --search [ramp s] [steady s] [s between state changes]
#       per proxy, the largest N (doubling from START, default 500, up to a quarter of the
#       descriptor limit; halving from START if it is already outside; then the gap halved twice)
#       with every agent signed in, no failure, sign-in p99 under 2 s and REST p99 under 100 ms
#
# EVENTS: seconds between events on each WebSocket (30). ONLY: the proxies to run, by name
# ("ccedge nginx-lua nginx"). CCEDGE and AGENTS_BIN name other builds of ccedge and of the
# simulator (default: ccedge's release build, the simulator's quick build).
set -euo pipefail
cd "$(dirname "$0")/.."

SEARCH=""
if [ "${1:-}" = "--search" ]; then SEARCH=1; shift; set -- 0 "$@"; fi
AGENTS=${1:-200}
RAMP=${2:-60}
STEADY=${3:-60}
CHANGE=${4:-100}
ONLY=${ONLY:-ccedge nginx-lua nginx}
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
mkdir -m 777 "$work/nginx-cache-lua" "$work/nginx-cache-plain"
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
CONF

# The vendor's design: nginx + Lua, each request authenticated from a shared-dict verdict cache
# (the validator asked on a miss, the credential after `xmpp` for a WebSocket),
# proxy_cache for the desktop's files, WebSocket proxying, the same forwarding headers. Plain
# nginx: the same without the Lua block (no authentication at the proxy).
nginx_conf() {
  local modules="" dict="" access=""
  if [ "$1" = lua ]; then
    modules="load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
"
    dict="  lua_shared_dict verdicts 50m;
"
    access=$(cat <<'LUA'
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
        if not sock:connect("127.0.0.1", ORIGIN_PORT) then return ngx.exit(503) end
        sock:send("GET /finesse/api/UserAuth HTTP/1.1\r\nHost: finesse\r\nAuthorization: " .. auth .. "\r\n\r\n")
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
LUA
)
    access="${access//ORIGIN_PORT/$ORIGIN}
"
  fi
  cat <<CONF
${modules}worker_processes 1;
worker_rlimit_nofile $(ulimit -n);
daemon off;
pid $work/nginx-$1.pid;
error_log $work/nginx-$1-error.log warn;
events { worker_connections $(ulimit -n); }
http {
  access_log off;
$dict  proxy_cache_path $work/nginx-cache-$1 levels=1:2 keys_zone=desktop-$1:10m max_size=64m inactive=60m use_temp_path=off;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  upstream finesse { server 127.0.0.1:$ORIGIN; keepalive 128; }
  server {
    listen 127.0.0.1:$PORT ssl http2;
    server_name $HOST;
    ssl_certificate $work/proxy.crt;
    ssl_certificate_key $work/proxy.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets off;
    keepalive_timeout 20s;                   # the vendor's, and ccedge's default
    proxy_http_version 1.1;
    proxy_set_header Host \$host:\$server_port;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    proxy_set_header X-Real-IP \$remote_addr;
    proxy_set_header X-Forwarded-Proto \$scheme;
    proxy_set_header X-Forwarded-Port \$server_port;
    location /desktop/ {
      proxy_cache desktop-$1;
      proxy_cache_valid 200 24h;
      proxy_cache_lock on;
      proxy_cache_revalidate on;
      proxy_set_header Connection "";
      proxy_pass http://finesse;
    }
    location / {
$access      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 3600s;
      proxy_pass http://finesse;
    }
  }
}
CONF
}
nginx_conf lua > "$work/nginx-lua.conf"
nginx_conf plain > "$work/nginx.conf"

# One run of $AGENTS agents against the proxy started by "$@": a table row, and the simulator's
# line in $work/last.json.
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
  # Every desktop file once, so that each proxy's cache is full before its idle size is read.
  "$AGENTS_BIN" warm "$PORT" "$HOST" "$work/ca.crt"
  # nginx serves from its worker; ccedge from itself.
  local worker
  worker=$(pgrep -P "$proxy" -f "worker process" || echo "$proxy")
  idle=$(awk '/VmRSS/ {print $2}' "/proc/$worker/status")
  # A simulator that fails outright counts as a run outside the limits.
  result=$("$AGENTS_BIN" run "$PORT" "$HOST" "$work/ca.crt" "$AGENTS" "$RAMP" "$STEADY" "$CHANGE" "$worker") \
    || result='{"signed_in":0,"failures":1,"sign_in_p50_ms":0,"sign_in_p99_ms":0,"rest_p50_ms":0,"rest_p99_ms":0,"proxy_cpu_s":0,"proxy_rss_kib":0,"simulator_cpu_s":0,"steady_cpu_s":0,"steady_s":0}'
  kill "$proxy"; wait "$proxy" 2>/dev/null || true
  unset 'pids[-1]'
  cat "$work/$name.err" "$work"/nginx-*error.log 2>/dev/null | grep -v "^$" | tail -8 >&2 || true
  rm -f "$work"/nginx-*error.log
  echo "$result" > "$work/last.json"
  python3 - "$name" "$result" "$idle" "$AGENTS" "$RAMP" "$STEADY" <<'PY'
import json, sys
name, r, idle, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
hours = (int(sys.argv[5]) + int(sys.argv[6])) / 3600
print(f"| {name} | {r['signed_in']}/{n} | {r['failures']} | {r.get('reconnects', 0)} | {r['sign_in_p50_ms']:.0f} / {r['sign_in_p99_ms']:.0f} "
      f"| {r['rest_p50_ms']:.1f} / {r['rest_p99_ms']:.1f} | {r['proxy_cpu_s'] / (n * hours):.2f} "
      f"| {r['steady_cpu_s'] / max(r['signed_in'] * r['steady_s'] / 3600, 1e-9):.2f} "
      f"| {r['proxy_rss_kib'] / 1024:.0f} | {(r['proxy_rss_kib'] - idle) / max(r['signed_in'], 1):.0f} | {r['simulator_cpu_s'] / (int(sys.argv[5]) + int(sys.argv[6])):.2f} |")
PY
}

run() {
  case $1 in
    ccedge) measure ccedge env RUST_LOG=warn "$CCEDGE" -c "$work/ccedge.yaml" ;;
    nginx-lua)
      rm -rf "${work:?}"/nginx-cache-lua/*
      measure "nginx + Lua" nginx -c "$work/nginx-lua.conf" -p "$work" ;;
    nginx)
      rm -rf "${work:?}"/nginx-cache-plain/*
      measure "nginx (no auth)" nginx -c "$work/nginx.conf" -p "$work" ;;
  esac
}

# Within the limits: every agent signed in, no failure, sign-in p99 < 2 s, REST p99 < 100 ms.
within() {
  python3 - "$work/last.json" "$AGENTS" <<'PY'
import json, sys
r, n = json.load(open(sys.argv[1])), int(sys.argv[2])
ok = r["signed_in"] == n and r["failures"] == 0 and r["sign_in_p99_ms"] < 2000 and r["rest_p99_ms"] < 100
sys.exit(0 if ok else 1)
PY
}

echo "agents signing in over ${RAMP}s, then ${STEADY}s more; a state change every ${CHANGE}s, an event every ${EVENTS}s"
echo
echo "| proxy | signed in | failures | reconnects | sign-in ms p50 / p99 | REST ms p50 / p99 | CPU s per agent-hour | steady state | MiB | KiB per agent | simulator cores |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
if [ -z "$SEARCH" ]; then
  for proxy in $ONLY; do run "$proxy"; done
  exit 0
fi
# The proxy holds about three descriptors per agent (two client connections, the WebSocket's
# upstream one), the simulator two: the search stops where the descriptor limit would.
most=$(( $(ulimit -n) / 4 ))
found=()
[ "${START:-500}" -ge 1 ] || { echo "START must be 1 or more" >&2; exit 2; }
for proxy in $ONLY; do
  good=0 bad=0 AGENTS=${START:-500}
  while [ "$AGENTS" -le "$most" ]; do
    run "$proxy"
    if within; then good=$AGENTS; AGENTS=$((AGENTS * 2)); else bad=$AGENTS; break; fi
  done
  if [ "$bad" -eq 0 ] && [ "$good" -lt "$most" ]; then
    AGENTS=$most
    run "$proxy"
    if within; then good=$AGENTS; else bad=$AGENTS; fi
  fi
  # Outside the limits from the first run: halve until a run is within them.
  while [ "$good" -eq 0 ] && [ "$bad" -gt 1 ]; do
    AGENTS=$((bad / 2))
    run "$proxy"
    if within; then good=$AGENTS; else bad=$AGENTS; fi
  done
  for _ in 1 2; do
    [ "$good" -gt 0 ] && [ "$bad" -gt 0 ] || break
    AGENTS=$(( (good + bad) / 2 ))
    run "$proxy"
    if within; then good=$AGENTS; else bad=$AGENTS; fi
  done
  found+=("$proxy: $good agents per worker within the limits (first outside: ${bad/#0/none up to $most})")
done
echo
printf '%s\n' "${found[@]}"
