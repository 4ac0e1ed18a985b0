# Parley: `make dev` runs the suite locally, `make test` runs every test.
SHELL := /bin/bash
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
CHART_PY := .tools/chart-venv/bin/python
SERVICE_CRATES := -p parley-gateway -p parley-message -p parley-presence -p parley-receipt -p parley-notification
FUZZ_SECONDS ?= 30
IMAGE_REPOSITORY ?= ghcr.io/parley-chat
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\(.*\)"/\1/p' helm/parley/Chart.yaml)

.DEFAULT_GOAL := help
.PHONY: help dev dev-cluster dev-cluster-check demo build rules-check rules-test test test-services fuzz lint fmt fmt-check clippy buf-lint buf-breaking proto-release chart-lint chart-test repo-check machete deny images migrate clean bench bench-full bench-build web web-test

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

WEB := clients/web
WEB_MODULES := $(WEB)/node_modules/.package-lock.json

dev: ## Run all five services on localhost (SQLite under ./data/, in-process bus and presence) and serve the web client
	cargo build -p parley-cli
	@$(MAKE) --no-print-directory web
	target/debug/parley dev --data data --web $(WEB)/dist

$(WEB_MODULES): $(WEB)/package-lock.json
	@scripts/ensure-web.sh
	cd $(WEB) && npm ci --no-audit --no-fund
	@touch $(WEB_MODULES)

web: $(WEB_MODULES) ## Build the web client (TypeScript from proto/ by protoc-gen-es, bundled by Vite) into clients/web/dist
	cd $(WEB) && npm run build

web-test: web ## The web client end to end: two users in headless Chromium (Debian's) against `parley dev`, screenshots in target/web-e2e/
	@scripts/ensure-web.sh --chromium
	cargo build --workspace --all-targets
	cd $(WEB) && node e2e/chat.mjs

dev-cluster: test-services ## The production shape on this machine: each service its own process, on MariaDB and Redis, two gateways, service credentials (logs under data/cluster/)
	cargo build --workspace --all-targets
	target/debug/parley dev-cluster --data data/cluster

dev-cluster-check: test-services ## Start the dev cluster, send a message and its read receipt across its two gateways, stop it
	cargo build --workspace --all-targets
	target/debug/parley dev-cluster --check --ports 31151 --data target/dev-cluster-check \
		--mysql "$${PARLEY_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306}" --redis "$${PARLEY_TEST_REDIS_URL:-redis://127.0.0.1:6379/3}"

demo: ## Play the seeds' scenario against `make dev` (run it in another terminal)
	@cargo build -q -p parley-cli
	@target/debug/parley demo

build: ## Build every crate
	cargo build --workspace --all-targets

test: test-services ## Run every test (unit, contract on MariaDB and SQLite, integration, chart against the binaries, the dev cluster's check, the web client in Chromium)
	@command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
	cargo nextest run --workspace --profile $(if $(CI),ci,default)
	@$(MAKE) --no-print-directory chart-test
	@$(MAKE) --no-print-directory rules-test
	@$(MAKE) --no-print-directory dev-cluster-check
	@$(MAKE) --no-print-directory web-test

fuzz: ## Every parser property with 20,000 cases and 200 live frame sequences, then each cargo-fuzz target for FUZZ_SECONDS (30) seconds
	@command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	PROPTEST_CASES=$${PROPTEST_CASES:-20000} timeout 900 cargo nextest run --workspace -E 'test(/::properties::/) | test(any_sequence_of_frames_gets_documented_answers)'
	cargo fuzz build --sanitizer none
	@for target in $$(cargo fuzz list); do \
		echo "fuzz: $$target for $(FUZZ_SECONDS) s"; \
		cargo fuzz run --sanitizer none $$target -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 2>&1 \
			| grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)|panicked|ERROR|SUMMARY|Failing input|Reproduce'; \
		status=$${PIPESTATUS[0]}; [ $$status -eq 0 ] || { echo "fuzz: $$target found a crash (fuzz/artifacts/$$target)"; exit $$status; }; \
	done

test-services: ## Start MariaDB and Redis for the tests when they are not running
	@scripts/ensure-services.sh

bench-build: ## Build the benchmark and the services in release mode
	cargo build --release -p parley-bench $(SERVICE_CRATES)

bench: test-services bench-build ## Short benchmark (about 3 minutes after the build): table with baselines, JSON in bench-results.json, charts in target/bench-charts/
	target/release/parley-bench --plots target/bench-charts

bench-full: test-services bench-build ## Every part of the benchmark at full size; its charts (SVG) in bench/charts/, which BENCHMARKS.md shows
	target/release/parley-bench --full --json bench-full-results.json --plots bench/charts

lint: fmt-check clippy buf-lint buf-breaking chart-lint rules-check repo-check machete deny ## rustfmt, clippy -D warnings, buf lint and breaking, Helm chart lint and validation, the alert rules and dashboard, repository guards, unused dependencies, cargo deny

fmt: ## Format the code
	cargo fmt --all
	cargo fmt --manifest-path fuzz/Cargo.toml

fmt-check: ## Check the formatting (what `make lint` runs)
	cargo fmt --all -- --check
	cargo fmt --manifest-path fuzz/Cargo.toml -- --check

clippy: ## Clippy with -D warnings over every target, the fuzz workspace included
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --manifest-path fuzz/Cargo.toml --target-dir target --no-default-features -- -D warnings

repo-check: ## Licence in every manifest, every Make target documented, the pinned toolchain
	@scripts/ensure-python.sh
	python3 scripts/repo_check.py

machete: ## Unused dependencies in every manifest (cargo-machete, installed when missing)
	@command -v cargo-machete >/dev/null || cargo install cargo-machete --locked
	cargo machete

deny: ## cargo deny: advisories, licences, duplicate crates and sources of every dependency (deny.toml)
	scripts/deny.sh

$(BUF):
	@mkdir -p .tools && echo '{"name":"parley-tools","private":true}' > .tools/package.json
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

buf-lint: $(BUF) ## Lint the gRPC contracts under proto/
	$(BUF) lint

# The protos as last released (`make proto-release` at each release writes
# releases/proto-<appVersion>.binpb); every change must keep their wire and
# generated-code compatibility (buf's FILE rules).
PROTO_RELEASE := $(lastword $(sort $(wildcard releases/proto-*.binpb)))

buf-breaking: $(BUF) ## Check proto/ against the last released protos (no breaking change)
	@test -n "$(PROTO_RELEASE)" || { echo "buf-breaking: no releases/proto-*.binpb to compare with"; exit 1; }
	$(BUF) breaking --against $(PROTO_RELEASE)

proto-release: $(BUF) ## At a release: record proto/ as releases/proto-<appVersion>.binpb, the baseline of buf-breaking
	$(BUF) build -o releases/proto-$(IMAGE_TAG).binpb

$(CHART_PY): scripts/chart-requirements.txt
	@scripts/ensure-python.sh
	python3 -m venv .tools/chart-venv
	.tools/chart-venv/bin/pip install --quiet --disable-pip-version-check -r scripts/chart-requirements.txt
	@touch $(CHART_PY)

chart-lint: $(CHART_PY) ## Lint, render and validate the Helm chart (default and production values)
	$(CHART_PY) scripts/chart_check.py

# Built as `make test`'s nextest build was (every target, so the same
# features), which makes it nearly free after the tests.
rules-check: ## The SLO rules and the dashboard: written from scripts/slo.py's and scripts/dashboard.py's tables, the rules valid for promtool (Debian's prometheus package, unpacked into .tools/)
	python3 scripts/slo.py --check
	python3 scripts/dashboard.py --check
	$$(scripts/ensure-promtool.sh) check rules helm/parley/rules/slo.rules.yaml

rules-test: ## promtool's unit tests of the SLO rules: each alert fires on series that burn its budget and stays quiet on healthy ones
	$$(scripts/ensure-promtool.sh) test rules helm/parley/rules/tests/slo_test.yaml

chart-test: $(CHART_PY) ## The chart's env, ports, probes and commands against what the binaries read
	cargo build --workspace --all-targets
	$(CHART_PY) scripts/chart_check.py --binaries target/debug

images: ## Build the five service images (needs a Docker engine)
	for s in gateway message presence receipt notification; do \
	  docker build --target $$s -t $(IMAGE_REPOSITORY)/parley-$$s:$(IMAGE_TAG) . || exit 1; \
	done

migrate: ## Apply migrations to the dev databases under ./data/
	cargo run --bin parley-message -- migrate
	cargo run --bin parley-receipt -- migrate
	cargo run --bin parley-notification -- migrate

clean: ## Remove build output, dev data and tools
	rm -rf target data .tools $(WEB)/node_modules $(WEB)/dist $(WEB)/src/gen
