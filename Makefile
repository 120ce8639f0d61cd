# Entry points. The local cluster (deploy/local/cluster.sh) is real etcd + kube-apiserver +
# kube-controller-manager + kube-scheduler on loopback, a real node (kubelet + containerd + runc +
# kube-proxy, pulling the project's images from a loopback registry) and the process node (tainted:
# only the benchmarks' pods go there). ACTIVITY_REAL_NODE=0, or a machine that cannot run the real
# node (cluster.sh says why), runs the process node alone. Its kubectl and helm come from
# .local/bin-dir (the pinned upstream builds), never from the system.
#
#   make build         build every binary of the workspace
#   make cluster       build, then start the local cluster (idempotent)
#   make cluster-down  stop it
#   make test          the Go and Python SDKs' suites, fmt, clippy, unit tests, the fuzz targets
#                      (FUZZ_TEST_SECONDS each), cluster selftest, then the integration tests
#                      (operator, worker, CLI, chart) against the local cluster (started, and
#                      stopped again, if it was not running)
#   make chaos         CHAOS_ROUNDS rounds of faults against the running local cluster
#   make dev           cluster + the operator from the chart + the examples, then how to watch them
#   make images        the OCI images (static musl binaries on scratch, built by buildah from
#                      operator/Dockerfile, worker-image/Dockerfile and the SDK examples' Dockerfiles;
#                      deploy/local/images.sh), pushed to the local cluster's registry when it runs.
#                      `cluster`, `dev` and `test` build them first (when the real node will run).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

CLUSTER := deploy/local/cluster.sh
# ACTIVITY_LOCAL_DIR (as for cluster.sh) runs `cluster`/`dev` on a cluster of another state directory.
LOCAL := $(or $(ACTIVITY_LOCAL_DIR),$(CURDIR)/.local)
KUBECONFIG_LOCAL := $(LOCAL)/kubeconfig
CHART := charts/activity-operator
RELEASE := activity-operator
NAMESPACE ?= activity-system

.PHONY: build cluster cluster-down test dev images

build:
	cargo build --workspace --bins

# The images the real node pulls: built before `up` (which pushes them to its registry when it
# starts the node), and pushed again after it (a cluster that was already running gets this build).
# Skipped, with the reason, where the real node will not run.
images_before_up = if why=$$(ACTIVITY_LOCAL_DIR=$(LOCAL) $(CLUSTER) realnode-check); then deploy/local/images.sh build; else echo "images: not built: no real node ($$why)"; fi
images_after_up = if ACTIVITY_LOCAL_DIR=$(LOCAL) $(CLUSTER) registry >/dev/null; then ACTIVITY_LOCAL_DIR=$(LOCAL) $(CLUSTER) images; fi

# `build` has just built the process node, so `up` need not run cargo again.
cluster: build
	$(images_before_up)
	ACTIVITY_NODE_BUILD=0 $(CLUSTER) up
	$(images_after_up)

cluster-down:
	$(CLUSTER) down

images:
	deploy/local/images.sh build
	@if ACTIVITY_LOCAL_DIR=$(LOCAL) $(CLUSTER) registry >/dev/null; then \
	  ACTIVITY_LOCAL_DIR=$(LOCAL) $(CLUSTER) images; \
	else \
	  echo "images: no local registry runs (cluster.sh up starts one with the real node and pushes these)"; \
	fi

# The Python SDK's tools and its one dependency (the official kubernetes client), from PyPI, in a
# virtualenv outside the repository.
VENV ?= $(or $(ACTIVITY_CACHE),$(HOME)/.cache/activity-operator)/venv
# The SDK itself is not installed: the venv is shared by every checkout, so the suite imports the
# checkout's own sources (PYTHONPATH=src).
$(VENV)/.installed: sdk/python/pyproject.toml
	[[ -x $(VENV)/bin/python ]] || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip uninstall -q -y heartbeat-activity 2>/dev/null || true
	$(VENV)/bin/pip install -q pytest mypy ruff 'kubernetes>=29'
	touch $@

.PHONY: test-sdk
# The Go and Python worker SDKs: lint, types, unit tests and the shared conformance scenarios
# (sdk/conformance; the Rust SDK runs them in worker-image/tests/conformance.rs).
test-sdk: $(VENV)/.installed
	cd sdk/go && go vet ./... && test -z "$$(gofmt -l .)" && go test ./...
	cd sdk/python && $(VENV)/bin/ruff check && $(VENV)/bin/ruff format --check && $(VENV)/bin/mypy && \
	  PYTHONPATH=src $(VENV)/bin/pytest -q

test: test-sdk
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace --lib --bins
	fuzz/run.sh $(FUZZ_TEST_SECONDS)
	cargo build --workspace --bins
	$(images_before_up)
	$(CLUSTER) selftest
	@started=0; \
	if ! $(CLUSTER) running; then started=1; fi; \
	stop() { if [[ $$started == 1 ]]; then echo "make test: stopping the cluster this run started"; $(CLUSTER) down; fi; }; \
	trap stop EXIT; \
	ACTIVITY_NODE_BUILD=0 $(CLUSTER) up; \
	$(images_after_up); \
	echo "make test: integration tests (cargo test --workspace) against $(KUBECONFIG_LOCAL)"; \
	cargo test --workspace; \
	echo "make test: chaos ($(CHAOS_ROUNDS) rounds of faults with the invariants checked)"; \
	CHAOS_ROUNDS=$(CHAOS_ROUNDS) cargo test -p activity-tests --test chaos -- --ignored --nocapture

dev: build
	$(images_before_up)
	ACTIVITY_NODE_BUILD=0 $(CLUSTER) up
	$(images_after_up)
	@bin=$$(cat $(LOCAL)/bin-dir); \
	if [[ -f $(CHART)/Chart.yaml ]]; then \
	  echo "dev: installing $(CHART) as release $(RELEASE) in namespace $(NAMESPACE)"; \
	  "$$bin/helm" --kubeconfig $(KUBECONFIG_LOCAL) upgrade --install $(RELEASE) $(CHART) \
	    --namespace $(NAMESPACE) --create-namespace --wait --timeout 3m; \
	  if compgen -G 'deploy/examples/*.yaml' >/dev/null; then \
	    "$$bin/kubectl" --kubeconfig $(KUBECONFIG_LOCAL) apply -f deploy/examples/; \
	  else \
	    echo "dev: note: no deploy/examples/*.yaml yet; nothing to apply"; \
	  fi; \
	else \
	  echo "dev: note: $(CHART) does not exist yet; skipping the operator install and the examples"; \
	fi; \
	echo; \
	echo "Watch the activities with:"; \
	echo "  $$bin/kubectl --kubeconfig $(KUBECONFIG_LOCAL) get activities -A -w"; \
	echo "or set up a shell with: eval \"\$$($(CLUSTER) env)\""

# Benchmarks (tests/bench, not part of `make test`): every scenario at its full size against a
# cluster of its own (state in $(BENCH_LOCAL), started and stopped here unless it already ran) with
# the process node alone (ACTIVITY_REAL_NODE=0: thousands of pods as host processes;
# deploy/local/realnode/bench.sh compares the two nodes), then docs/benchmarks.md is regenerated.
# BENCH_ARGS passes options to `activity-bench report`.
BENCH_LOCAL ?= /tmp/activity-bench
BENCH_ARGS ?=
.PHONY: bench
bench: build
	cargo build -p activity-bench -p activity-operator -p activity-worker --release
	@started=0; \
	if ! ACTIVITY_LOCAL_DIR=$(BENCH_LOCAL) $(CLUSTER) running; then started=1; fi; \
	stop() { if [[ $$started == 1 ]]; then echo "make bench: stopping the bench cluster"; ACTIVITY_LOCAL_DIR=$(BENCH_LOCAL) $(CLUSTER) down; fi; }; \
	trap stop EXIT; \
	ACTIVITY_LOCAL_DIR=$(BENCH_LOCAL) ACTIVITY_NODE_BUILD=0 ACTIVITY_REAL_NODE=0 $(CLUSTER) up; \
	ACTIVITY_BIN_DIR=$(abspath $(or $(CARGO_TARGET_DIR),target))/debug \
	ACTIVITY_OPERATOR_BIN=$(abspath $(or $(CARGO_TARGET_DIR),target))/release/activity-operator \
	ACTIVITY_WORKER_BIN=$(abspath $(or $(CARGO_TARGET_DIR),target))/release/activity-worker KUBECONFIG=$(BENCH_LOCAL)/kubeconfig cargo run -q -p activity-bench --release -- report $(BENCH_ARGS)

# Fault injection (operator SIGKILL/SIGSTOP, worker pod kills, worker SIGSTOP) during bursts, with
# the invariants checked each round (tests/tests/chaos.rs), against the running local cluster.
.PHONY: chaos fuzz
# The chaos test: CHAOS_ROUNDS rounds, each also restarting one of the API server, etcd and the
# process node; `make test` runs it last, on the cluster of its integration tests.
# `make test` runs every fuzz target for FUZZ_TEST_SECONDS after its unit tests.
CHAOS_ROUNDS ?= 5
FUZZ_TEST_SECONDS ?= 30

chaos: build
	CHAOS_ROUNDS=$(CHAOS_ROUNDS) cargo test -p activity-tests --test chaos -- --ignored --nocapture

# Every cargo-fuzz target for FUZZ_SECONDS each (cargo install cargo-fuzz first; fuzz/run.sh).
FUZZ_SECONDS ?= 60
fuzz:
	fuzz/run.sh $(FUZZ_SECONDS)
