#!/usr/bin/env bash
# make image-test: build the ccedge image with podman (daemonless), run it against demo
# upstreams on loopback, change the mounted configuration, send SIGHUP, and check that the
# change took effect; then stop it gracefully. Everything stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'image-test: %s\n' "$*"; }
fail() { printf 'image-test: FAILED: %s\n' "$*" >&2; exit 1; }

BASE=localhost/debian:bookworm-slim
BUILDER=localhost/ccedge-build:local
IMAGE=localhost/ccedge:test
NAME=ccedge-image-test
PORT=28443
ADMIN=29900

# Where a container may not raise its resource limits (as in some sandboxes), explicit low ones
# and runc (which copes with hybrid cgroups) let podman run it anyway.
RUN_OPTS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
PODMAN=(podman)
command -v runc >/dev/null 2>&1 && PODMAN=(podman --runtime runc)

work=$(mktemp -d)
demo_pid=""
cleanup() {
  "${PODMAN[@]}" rm -f "$NAME" >/dev/null 2>&1 || true
  [ -n "$demo_pid" ] && kill "$demo_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if ! podman image exists "$BASE"; then
  if timeout 60 podman pull -q docker.io/library/debian:bookworm-slim >/dev/null 2>&1; then
    podman tag docker.io/library/debian:bookworm-slim "$BASE"
  else
    say "no registry reachable: building $BASE with debootstrap (once)"
    rootfs=/var/tmp/ccedge-rootfs
    [ -x "$rootfs/bin/sh" ] || debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    tar -C "$rootfs" -c . | podman import - "$BASE" >/dev/null
  fi
fi

say "building ccedge and the demo upstreams"
cargo build --release --bin ccedge --example demo
mkdir -p "$work/builder"
cp target/release/ccedge "$work/builder/"
printf 'FROM %s\nCOPY ccedge /src/target/release/ccedge\n' "$BASE" \
  | "${PODMAN[@]}" build -q "${RUN_OPTS[@]}" -t "$BUILDER" -f - "$work/builder" >/dev/null

say "building $IMAGE from docker/Dockerfile"
"${PODMAN[@]}" build -q --format docker "${RUN_OPTS[@]}" \
  --build-arg RUST_IMAGE="$BUILDER" --build-arg BASE_IMAGE="$BASE" \
  -f docker/Dockerfile -t "$IMAGE" . >/dev/null

target/release/examples/demo serve "$work/demo" >/dev/null 2>&1 &
demo_pid=$!

mkdir -p "$work/etc"
config() {
  cat > "$work/etc/ccedge.yaml" <<YAML
server:
  threads: 1
  pid_file: /run/ccedge/ccedge.pid
  upgrade_sock: /run/ccedge/upgrade.sock
  grace_period_seconds: 2
  graceful_shutdown_timeout_seconds: 2
  access_log: stdout
  admin:
    listen: 127.0.0.1:$ADMIN
digital_channels:
  - name: cloudconnect
    listen: 127.0.0.1:$PORT
    public: $1:443
    publisher: 127.0.0.1:18445
    subscriber: 127.0.0.1:18446
YAML
  chmod -R a+rX "$work/etc"
}
config dc.example.com

answered_host() {
  curl -s --max-time 2 "http://127.0.0.1:$PORT/drapi/v1/tasks" | grep -o '"host": "[^"]*"' || true
}
wait_for_host() {
  for _ in $(seq 100); do
    [ "$(answered_host)" = "\"host\": \"$1:443\"" ] && return 0
    sleep 0.2
  done
  "${PODMAN[@]}" logs "$NAME" | tail -20 >&2
  fail "requests never reached Cloud Connect with Host $1:443"
}

say "running $IMAGE"
"${PODMAN[@]}" run -d --name "$NAME" --network host "${RUN_OPTS[@]}" \
  -v "$work/etc:/etc/ccedge:ro" "$IMAGE" >/dev/null
wait_for_host dc.example.com
say "serving: Cloud Connect sees Host dc.example.com:443"

uid=$("${PODMAN[@]}" exec "$NAME" id -u)
[ "$uid" != 0 ] || fail "ccedge runs as root"
"${PODMAN[@]}" healthcheck run "$NAME" >/dev/null || fail "HEALTHCHECK reports unhealthy"
say "runs as uid $uid; HEALTHCHECK healthy"

config dc2.example.com
"${PODMAN[@]}" kill -s HUP "$NAME" >/dev/null
wait_for_host dc2.example.com
"${PODMAN[@]}" logs "$NAME" 2>&1 | grep -q "supervisor: reloaded" || fail "no reload in the log"
say "SIGHUP reloaded the edited configuration: Host is now dc2.example.com:443"

"${PODMAN[@]}" stop -t 30 "$NAME" >/dev/null
code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || fail "stopped with exit code $code"
say "stopped gracefully (exit 0). PASS"
