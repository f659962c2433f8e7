#!/usr/bin/env bash
# ccedge against nginx on this machine (bench/run.py explains the scenarios and the method).
#
#   bash bench/run.sh [--seconds N] [--rounds N] [--websockets N] [--access-log off|on|both]
#                     [--only h1 h2 cache subst ws] [--baseline OTHER_CCEDGE] [--syscalls]
#
# Installs nginx, wrk and h2load when missing, builds ccedge in release mode, and prints a
# Markdown table of medians and ccedge/nginx ratios. Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=""
command -v nginx >/dev/null 2>&1 || missing="$missing nginx-light"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v h2load >/dev/null 2>&1 || missing="$missing nghttp2-client"
command -v strace >/dev/null 2>&1 || missing="$missing strace"
command -v ss >/dev/null 2>&1 || missing="$missing iproute2"
if [ -n "$missing" ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
cargo build --release --bin ccedge >/dev/null 2>&1 || cargo build --release --bin ccedge
# 10,000 idle WebSockets need two descriptors each in each proxy.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/run.py "$@"
