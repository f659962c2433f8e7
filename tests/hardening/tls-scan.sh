#!/usr/bin/env bash
# TLS as a scanner sees it: sslyze (from PyPI, in a virtualenv under target/) against a ccedge
# listener on loopback. Passes when only TLS 1.2 and 1.3 are accepted, every accepted suite is
# AEAD, TLS compression is off and renegotiation (secure or client-initiated) is refused.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=${SSLYZE_VENV:-target/hardening/sslyze}
if [ ! -x "$venv/bin/sslyze" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q sslyze
fi
cargo build -q --bin ccedge

work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=dc.example.com \
  -addext subjectAltName=DNS:dc.example.com -keyout "$work/proxy.key" -out "$work/proxy.crt" 2>/dev/null
port=28401
cat > "$work/ccedge.yaml" <<CONF
server:
  threads: 1
  pid_file: $work/ccedge.pid
  upgrade_sock: $work/ccedge.sock
  access_log: "off"
digital_channels:
  - name: scan
    listen: 127.0.0.1:$port
    public: dc.example.com:443
    tls: {cert: $work/proxy.crt, key: $work/proxy.key}
    publisher: 127.0.0.1:28402
    subscriber: 127.0.0.1:28403
CONF
target/debug/ccedge -c "$work/ccedge.yaml" 2>"$work/ccedge.err" &
pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

"$venv/bin/sslyze" --quiet --json_out="$work/scan.json" \
  --sslv2 --sslv3 --tlsv1 --tlsv1_1 --tlsv1_2 --tlsv1_3 --compression --reneg \
  "dc.example.com:$port{127.0.0.1}" >/dev/null
"$venv/bin/python" - "$work/scan.json" <<'PY'
import json, sys
scan = json.load(open(sys.argv[1]))["server_scan_results"][0]["scan_result"]
problems = []
for version in ["ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"]:
    accepted = scan[f"{version}_cipher_suites"]["result"]["accepted_cipher_suites"]
    if accepted:
        problems.append(f"{version} is accepted")
for version in ["tls_1_2", "tls_1_3"]:
    accepted = scan[f"{version}_cipher_suites"]["result"]["accepted_cipher_suites"]
    if not accepted:
        problems.append(f"{version} is not accepted")
    for suite in accepted:
        name = suite["cipher_suite"]["name"]
        if not any(aead in name for aead in ("GCM", "CHACHA20_POLY1305", "CCM")):
            problems.append(f"{version} accepts {name}, not an AEAD suite")
        print(f"{version}: {name}")
if scan["tls_compression"]["result"]["supports_compression"]:
    problems.append("TLS compression is on")
reneg = scan["session_renegotiation"]["result"]
if reneg["is_vulnerable_to_client_renegotiation_dos"]:
    problems.append("client-initiated renegotiation is accepted")
print("compression:", scan["tls_compression"]["result"]["supports_compression"])
print("renegotiation:", reneg)
if problems:
    print("TLS scan failed:\n  " + "\n  ".join(problems))
    sys.exit(1)
print("TLS scan passed: TLS 1.2 and 1.3 only, AEAD suites only, no compression, no client renegotiation")
PY
