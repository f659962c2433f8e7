#!/usr/bin/env python3
"""ccedge against nginx on this machine: the same origin, the same header work, one worker each,
loopback only. Run through bench/run.sh, which installs the tools and builds ccedge.

Each scenario runs in alternating (ABBA) rounds; the report gives medians per proxy: requests
per second, p50/p99 latency, CPU seconds per 100,000 requests (the proxy's own CPU time, from
/proc) and peak RSS, and the ccedge/nginx ratios, as a Markdown table.
"""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HZ = os.sysconf("SC_CLK_TCK")
ORIGIN, ORIGIN_TLS, WS_ORIGIN = 28501, 28502, 28503
NGINX = {"h1": 28510, "h2": 28511, "cache": 28512, "subst": 28513, "ws": 28514}
CCEDGE = {"h1": 28520, "h2": 28521, "cache": 28522, "subst": 28523, "ws": 28524}
# A second ccedge, in place of nginx, with --baseline.
BASELINE = {"h1": 28530, "h2": 28531, "cache": 28532, "subst": 28533, "ws": 28534}
HOST = "bench.example.com"
MARKER = b"chat1.cc.internal:5280"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


class Proc:
    """A process of the bench, with its CPU time and peak RSS read from /proc."""

    def __init__(self, name, cmd, pid_of=None, **kw):
        self.name = name
        self.popen = subprocess.Popen(cmd, **kw)
        self.pid_of = pid_of

    @property
    def pid(self):
        return self.pid_of() if self.pid_of else self.popen.pid

    def cpu_seconds(self):
        fields = open(f"/proc/{self.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ

    def rss_kib(self, field="VmRSS"):
        for line in open(f"/proc/{self.pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def reset_peak(self):
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")

    def stop(self):
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    import socket

    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def files(work):
    os.makedirs(f"{work}/files/desktop", exist_ok=True)
    with open(f"{work}/files/small", "wb") as f:
        f.write(b"x" * 64)
    with open(f"{work}/files/16k", "wb") as f:
        f.write(b"y" * 16384)
    with open(f"{work}/files/desktop/app.js", "wb") as f:
        f.write(b"z" * 4096)
    block = b"var home = '" + MARKER + b"';\n" + b"w" * 4060 + b"\n"
    with open(f"{work}/files/5m.js", "wb") as f:
        f.write(block * (5 * 1024 * 1024 // len(block)))
    sh(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}",
        "-keyout", f"{work}/proxy.key", "-out", f"{work}/proxy.crt"])


def nginx_conf(work, access_log):
    user = f"user {os.environ.get('USER', 'root')};" if os.geteuid() == 0 else ""
    log = (f"access_log {work}/nginx-access.log bench;" if access_log else "access_log off;")
    headers = f"""
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host {HOST}:443;
      proxy_set_header X-Client-IP $remote_addr;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-For "$remote_addr, $server_addr";
      proxy_set_header X-Forwarded-Port 443;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header TrackingID $request_id;
      add_header TrackingID $request_id;
      proxy_hide_header Server;"""
    return f"""{user}
worker_processes 1;

daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log error;
events {{ worker_connections 30000; }}
http {{
  server_tokens off;
  log_format bench escape=json '{{"time":"$time_iso8601","service":"bench","client_ip":"$remote_addr",'
    '"method":"$request_method","host":"$host","path":"$uri","protocol":"$server_protocol",'
    '"status":$status,"bytes_sent":$bytes_sent,"duration_ms":$request_time,'
    '"upstream":"$upstream_addr","upstream_status":"$upstream_status",'
    '"cache":"$upstream_cache_status","tracking_id":"$request_id"}}';
  {log}
  # Pingora puts no limit on requests per connection, downstream or upstream; nginx's default
  # (1000) would make it reconnect, and h2load does not reconnect after a GOAWAY.
  keepalive_requests 10000000;
  upstream origin {{ server 127.0.0.1:{ORIGIN}; keepalive 128; keepalive_requests 10000000; }}
  upstream ws_origin {{ server 127.0.0.1:{WS_ORIGIN}; }}
  proxy_cache_path {work}/nginx-cache keys_zone=desktop:16m max_size=256m;
  server {{
    listen 127.0.0.1:{NGINX['h1']};
    listen 127.0.0.1:{NGINX['h2']} ssl http2;
    ssl_certificate {work}/proxy.crt;
    ssl_certificate_key {work}/proxy.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets off;
    ssl_session_cache off;
    location / {{ proxy_pass http://origin; {headers} }}
  }}
  server {{
    listen 127.0.0.1:{NGINX['cache']};
    location / {{
      proxy_pass http://origin; {headers}
      proxy_cache desktop;
      proxy_cache_key $host$request_uri;
      proxy_cache_revalidate on;
      proxy_cache_lock on;
      proxy_cache_use_stale error timeout updating;
      proxy_cache_background_update on;
    }}
  }}
  server {{
    listen 127.0.0.1:{NGINX['subst']};
    location / {{
      proxy_pass http://origin; {headers}
      proxy_set_header Accept-Encoding "";
      sub_filter '{MARKER.decode()}' 'chat.example.com:443';
      sub_filter_once off;
      sub_filter_types application/javascript;
    }}
  }}
  server {{
    listen 127.0.0.1:{NGINX['ws']};
    location / {{
      proxy_pass http://ws_origin; {headers}
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 3600s;
    }}
  }}
}}
"""


def origin_conf(work):
    user = f"user {os.environ.get('USER', 'root')};" if os.geteuid() == 0 else ""
    return f"""{user}
worker_processes 1;

daemon off;
pid {work}/origin.pid;
error_log {work}/origin-error.log error;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  types {{ application/javascript js; }}
  default_type text/plain;
  keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{ORIGIN};
    root {work}/files;
    location = /drapi/v1/ping {{ return 200 'ok'; }}
    location /desktop/ {{ add_header Cache-Control "max-age=3600"; }}
    location / {{ try_files /small =404; }}
    location = /16k {{ try_files /16k =404; }}
    location = /5m.js {{ }}
  }}
}}
"""


def ccedge_conf(work, access_log, CCEDGE, name):
    log = f"{work}/{name}-access.log" if access_log else '"off"'
    servers = lambda port: f'      - {{public: "{HOST}:{port}", upstream: "127.0.0.1:{ORIGIN}", role: other}}'
    return f"""server:
  threads: 1
  pid_file: {work}/{name}.pid
  upgrade_sock: {work}/{name}.sock
  access_log: {log}
digital_channels:
  - name: h1
    listen: 127.0.0.1:{CCEDGE['h1']}
    public: {HOST}:443
    publisher: 127.0.0.1:{ORIGIN}
    subscriber: 127.0.0.1:{ORIGIN_TLS}
    rate_limits: []
    limits: {{max_connections_per_ip: 0}}
  - name: h2
    listen: 127.0.0.1:{CCEDGE['h2']}
    public: {HOST}:443
    tls: {{cert: {work}/proxy.crt, key: {work}/proxy.key}}
    publisher: 127.0.0.1:{ORIGIN}
    subscriber: 127.0.0.1:{ORIGIN_TLS}
    rate_limits: []
    limits: {{max_connections_per_ip: 0}}
finesse:
  - name: cache
    bind: 127.0.0.1
    servers:
{servers(CCEDGE['cache'])}
    cache: {{max_size_mb: 256}}
    limits: {{max_connections_per_ip: 0}}
  - name: subst
    bind: 127.0.0.1
    servers:
{servers(CCEDGE['subst'])}
    substitutions:
      - {{content_types: [application/javascript], replace: [{{from: "{MARKER.decode()}", to: "chat.example.com:443"}}]}}
    rewrite_upstream_hosts: false
    limits: {{max_connections_per_ip: 0}}
  - name: ws
    bind: 127.0.0.1
    servers:
      - {{public: "{HOST}:{CCEDGE['ws']}", upstream: "127.0.0.1:{WS_ORIGIN}", role: other}}
    limits: {{max_connections_per_ip: 0}}
"""


# --- load generators -------------------------------------------------------------------------

def wrk(url, seconds, connections, extra=()):
    out = sh(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", f"Host: {HOST}",
              *extra, url]).stdout

    def ms(label):
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return None
        return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]

    done = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{url}: {errors.group(1)} failed responses\n{out}")
    return {"requests": done, "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": ms("50%"), "p99": ms("99%")}


def h2load(url, seconds, work):
    log = f"{work}/h2load.log"
    out = sh(["h2load", "-c16", "-m10", "-D", str(seconds), "--log-file", log, url]).stdout
    rps = float(re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out).group(1))
    ok = int(re.search(r"(\d+) succeeded", out).group(1))
    # With -D, the streams still open when time is up count as failed; answers must be 2xx.
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if int(codes.group(3)) or int(codes.group(4)):
        raise SystemExit(f"{url}: error answers\n{out}")
    elapsed = sorted(int(line.split()[2]) for line in open(log) if line.strip())
    pct = lambda p: elapsed[min(len(elapsed) - 1, int(len(elapsed) * p))] / 1000
    return {"requests": ok, "rps": rps, "p50": pct(0.50), "p99": pct(0.99)}


# --- idle WebSockets -------------------------------------------------------------------------

async def ws_origin_main(port):
    async def handle(reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # a connection closed before its request (a proxy's probe or shutdown)
        key = re.search(rb"(?i)sec-websocket-key:\s*(\S+)", head).group(1)
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


async def open_websockets(port, count):
    async def one(i):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16))
        writer.write(b"GET /ws/" + str(i).encode() + b" HTTP/1.1\r\nHost: " + HOST.encode() +
                     b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"WebSocket {i} refused: {head[:60]!r}")
        return writer

    writers = []
    for start in range(0, count, 500):
        writers += await asyncio.gather(*(one(i) for i in range(start, min(count, start + 500))))
    return writers


def idle_websockets(proxy, port, count):
    before = proxy.rss_kib()
    loop = asyncio.new_event_loop()
    writers = loop.run_until_complete(open_websockets(port, count))
    time.sleep(1)
    after = proxy.rss_kib()
    for w in writers:
        w.close()
    loop.run_until_complete(asyncio.sleep(0.5))
    loop.close()
    time.sleep(1)
    return {"kib_per_connection": (after - before) / count}


# --- the run ---------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="per round and proxy")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--websockets", type=int,
                        help="idle WebSockets per proxy (default 10,000, fewer when the descriptor "
                             "limit is lower: each takes two descriptors in the proxy)")
    parser.add_argument("--access-log", choices=["off", "on", "both"], default="both")
    parser.add_argument("--only", nargs="*", help="scenarios to run (default: all)")
    parser.add_argument("--ccedge", default="target/release/ccedge")
    parser.add_argument("--syscalls", action="store_true",
                        help="instead of the scenarios: system calls per request (strace -c) and "
                             "upstream connections each proxy holds, on HTTP/1.1 and HTTP/2")
    parser.add_argument("--baseline", metavar="CCEDGE",
                        help="compare with this other ccedge binary instead of nginx (before/after)")
    args = parser.parse_args()
    if args.websockets is None:
        fits = (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1000) // 2
        args.websockets = min(10000, fits)
        if fits < 10000:
            print(f"idle WebSockets: {args.websockets}, as many as the descriptor limit allows", file=sys.stderr)

    work = tempfile.mkdtemp(prefix="ccedge-bench-")
    os.chmod(work, 0o755)
    files(work)
    procs = []
    try:
        run(args, work, procs)
    except SystemExit:
        for log in ("nginx-error.log", "origin-error.log", "ccedge.err"):
            if os.path.exists(f"{work}/{log}"):
                print(f"--- {log}:\n" + open(f"{work}/{log}").read()[-2000:], file=sys.stderr)
        raise
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(args, work, procs):
    open(f"{work}/origin.conf", "w").write(origin_conf(work))
    procs.append(Proc("origin", ["nginx", "-c", f"{work}/origin.conf", "-p", work]))
    ws = Proc("ws-origin", [sys.executable, __file__, "--ws-origin", str(WS_ORIGIN)])
    procs.append(ws)
    for port in (ORIGIN, WS_ORIGIN):
        wait_port(port)
    if args.syscalls:
        return syscalls(args, work, procs)
    report = []
    logs = {"off": [False], "on": [True], "both": [False, True]}[args.access_log]
    for access_log in logs:
        report += run_all(args, work, access_log, procs)
    print_report(report, args)


def start_ccedge(binary, work, access_log, ports, name, procs):
    open(f"{work}/{name}.yaml", "w").write(ccedge_conf(work, access_log, ports, name))
    ccedge = Proc(name, [binary, "-c", f"{work}/{name}.yaml"], stdout=subprocess.DEVNULL,
                  stderr=open(f"{work}/{name}.err", "w"), env={**os.environ, "RUST_LOG": "warn"})
    procs.append(ccedge)
    for port in ports.values():
        wait_port(port)
    return ccedge


def start_proxies(args, work, access_log, procs):
    """The reference (nginx, or with --baseline the other ccedge) and ccedge, with their ports."""
    if args.baseline:
        reference = start_ccedge(args.baseline, work, access_log, BASELINE, "before", procs)
        ccedge = start_ccedge(args.ccedge, work, access_log, CCEDGE, "after", procs)
        return (reference, BASELINE), (ccedge, CCEDGE)
    open(f"{work}/nginx.conf", "w").write(nginx_conf(work, access_log))
    nginx = Proc("nginx", ["nginx", "-c", f"{work}/nginx.conf", "-p", work])
    procs.append(nginx)
    wait_port(NGINX["h1"])
    master = nginx.popen.pid
    nginx.pid_of = lambda: int(sh(["pgrep", "-P", str(master)]).stdout.split()[0])
    ccedge = start_ccedge(args.ccedge, work, access_log, CCEDGE, "ccedge", procs)
    return (nginx, NGINX), (ccedge, CCEDGE)


def run_all(args, work, access_log, procs):
    (nginx, NGINX), (ccedge, CCEDGE) = start_proxies(args, work, access_log, procs)
    log = "log on" if access_log else "log off"
    scenarios = [
        ("HTTP/1.1 keep-alive, 64 B", lambda p, port: wrk(f"http://127.0.0.1:{port}/drapi/v1/tasks", args.seconds, 32), "h1"),
        ("HTTPS + HTTP/2, 64 B", lambda p, port: h2load(f"https://{HOST}:{port}/drapi/v1/tasks".replace(HOST, "127.0.0.1"), args.seconds, work), "h2"),
        ("HTTPS, new connection per request", lambda p, port: wrk(f"https://127.0.0.1:{port}/drapi/v1/tasks", args.seconds, 16, ("-H", "Connection: close")), "h2"),
        ("HTTP/1.1 keep-alive, 16 KB", lambda p, port: wrk(f"http://127.0.0.1:{port}/16k", args.seconds, 32), "h1"),
        ("cache hit, 4 KB", lambda p, port: wrk(f"http://127.0.0.1:{port}/desktop/app.js", args.seconds, 32), "cache"),
        ("5 MiB with substitution", lambda p, port: wrk(f"http://127.0.0.1:{port}/5m.js", args.seconds, 4), "subst"),
    ]
    if access_log:
        scenarios = scenarios[:2]
    results = []
    for name, run, kind in scenarios:
        if args.only and kind not in args.only and name not in args.only:
            continue
        # warm up (and fill the caches)
        for proxy, ports in ((nginx, NGINX), (ccedge, CCEDGE)):
            run(proxy, ports[kind])
        rounds = {nginx.name: [], ccedge.name: []}
        for proxy in (nginx, ccedge):
            proxy.reset_peak()
        for r in range(args.rounds):
            order = [(nginx, NGINX), (ccedge, CCEDGE)]
            if r % 2:
                order.reverse()
            for proxy, ports in order:
                cpu = proxy.cpu_seconds()
                m = run(proxy, ports[kind])
                m["cpu_per_100k"] = (proxy.cpu_seconds() - cpu) * 100000 / m["requests"]
                rounds[proxy.name].append(m)
        row = {"scenario": f"{name} ({log})"}
        for proxy in (nginx, ccedge):
            runs = rounds[proxy.name]
            row[slot(proxy, ccedge)] = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99", "cpu_per_100k")}
            row[slot(proxy, ccedge)]["peak_rss_mib"] = proxy.rss_kib("VmHWM") / 1024
        results.append(row)
        print(f"{row['scenario']}: {nginx.name} {row['nginx']['rps']:.0f} r/s, {ccedge.name} {row['ccedge']['rps']:.0f} r/s", file=sys.stderr)
    if not access_log and (not args.only or "ws" in args.only):
        row = {"scenario": f"{args.websockets} idle WebSockets"}
        for proxy, ports in ((nginx, NGINX), (ccedge, CCEDGE)):
            row[slot(proxy, ccedge)] = idle_websockets(proxy, ports["ws"], args.websockets)
        results.append(row)
    for proxy in (nginx, ccedge):
        proxy.stop()
        procs.remove(proxy)
    time.sleep(1)
    return results


def upstream_connections(pid):
    """Established connections from process `pid` to the origin."""
    out = sh(["ss", "-tnpH", "state", "established", f"( dport = :{ORIGIN} )"]).stdout
    return sum(1 for line in out.splitlines() if f"pid={pid}," in line)


def syscalls(args, work, procs):
    """System calls per request (strace -c on every thread of the proxy, while a load runs) and
    the upstream connections each proxy holds during it, with the access log off."""
    (nginx, NGINX), (ccedge, CCEDGE) = start_proxies(args, work, False, procs)
    loads = [
        ("HTTP/1.1 keep-alive, 64 B", "h1", lambda port: wrk(f"http://127.0.0.1:{port}/drapi/v1/tasks", args.seconds, 32)),
        ("HTTPS + HTTP/2, 64 B", "h2", lambda port: h2load(f"https://127.0.0.1:{port}/drapi/v1/tasks", args.seconds, work)),
    ]
    print("\n| load | proxy | syscalls per request | most frequent (per request) | upstream connections |")
    print("|---|---|---|---|---|")
    for name, kind, load in loads:
        for proxy, ports in ((nginx, NGINX), (ccedge, CCEDGE)):
            load(ports[kind])  # warm up
            out = f"{work}/strace-{proxy.name}-{kind}.txt"
            tracer = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(proxy.pid)],
                                      stderr=subprocess.DEVNULL)
            time.sleep(1)
            counted = {}

            def watch():
                counted["conns"] = upstream_connections(proxy.pid)

            timer = threading.Timer(args.seconds / 2, watch)
            timer.start()
            m = load(ports[kind])
            timer.join()
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
            calls = {}
            for line in open(out):
                parts = line.split()
                if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                    calls[parts[-1]] = int(parts[3])
            total = sum(calls.values())
            top = sorted(calls.items(), key=lambda kv: -kv[1])[:4]
            top_text = ", ".join(f"{k} {v / m['requests']:.2f}" for k, v in top)
            print(f"| {name} | {proxy.name} | {total / m['requests']:.2f} | {top_text} | {counted.get('conns', '?')} |")
    print(f"\nstrace slows both proxies; counts per request are what matters. {args.seconds} s per load.")
    for proxy in (nginx, ccedge):
        proxy.stop()
        procs.remove(proxy)


def slot(proxy, ccedge):
    """The report's column: `ccedge` for the ccedge under test, `nginx` for the reference."""
    return "ccedge" if proxy is ccedge else "nginx"


def print_report(report, args):
    a, b = ("before", "after") if args.baseline else ("nginx", "ccedge")
    print(f"\n| scenario | {a} r/s | {b} r/s | ratio | p50 ms {a} / {b} | p99 ms {a} / {b} "
          f"| CPU s per 100k {a} / {b} | peak RSS MiB {a} / {b} |")
    print("|---|---|---|---|---|---|---|---|")
    for row in report:
        n, c = row["nginx"], row["ccedge"]
        if "kib_per_connection" in n:
            ratio = c["kib_per_connection"] / n["kib_per_connection"] if n["kib_per_connection"] else 0
            print(f"| {row['scenario']} | | | {ratio:.2f} (memory) | | | | "
                  f"{n['kib_per_connection']:.1f} / {c['kib_per_connection']:.1f} KiB per connection |")
            continue
        print(f"| {row['scenario']} | {n['rps']:.0f} | {c['rps']:.0f} | {c['rps'] / n['rps']:.2f} "
              f"| {n['p50']:.2f} / {c['p50']:.2f} | {n['p99']:.2f} / {c['p99']:.2f} "
              f"| {n['cpu_per_100k']:.2f} / {c['cpu_per_100k']:.2f} "
              f"| {n['peak_rss_mib']:.1f} / {c['peak_rss_mib']:.1f} |")
    print(f"\n{args.rounds} ABBA rounds of {args.seconds} s per proxy and scenario; medians. "
          f"1 worker each; wrk -t1 (-c32, -c16 new connections, -c4 for 5 MiB), h2load -c16 -m10; "
          f"{os.cpu_count()} cores.")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--ws-origin":
        asyncio.run(ws_origin_main(int(sys.argv[2])))
    else:
        main()
