# Parley: `make dev` runs the suite locally, `make test` runs every test.
SHELL := /bin/bash
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf

.DEFAULT_GOAL := help
.PHONY: help dev demo build test test-services lint fmt fmt-check clippy buf-lint migrate clean bench bench-full bench-build

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

dev: ## Run all five services on localhost: SQLite under ./data/, in-process bus and presence
	cargo build -p parley-cli
	target/debug/parley dev --data data

demo: ## Play the seeds' scenario against `make dev` (run it in another terminal)
	@cargo build -q -p parley-cli
	@target/debug/parley demo

build: ## Build every crate
	cargo build --workspace --all-targets

test: test-services ## Run every test (unit, contract on MariaDB and SQLite, integration)
	@command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
	cargo nextest run --workspace --profile $(if $(CI),ci,default)

test-services: ## Start MariaDB and Redis for the tests when they are not running
	@scripts/ensure-services.sh

bench-build:
	cargo build --release -p parley-bench -p parley-gateway -p parley-message -p parley-presence -p parley-receipt -p parley-notification

bench: test-services bench-build ## Short benchmark (about 2 minutes after the build): table with baselines, JSON in bench-results.json
	target/release/parley-bench

bench-full: test-services bench-build ## Every part of the benchmark at full size
	target/release/parley-bench --full --json bench-full-results.json

lint: fmt-check clippy buf-lint ## rustfmt, clippy -D warnings and buf lint

fmt: ## Format the code
	cargo fmt --all

fmt-check:
	cargo fmt --all -- --check

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

$(BUF):
	@mkdir -p .tools && echo '{"name":"parley-tools","private":true}' > .tools/package.json
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

buf-lint: $(BUF) ## Lint the gRPC contracts under proto/
	$(BUF) lint

migrate: ## Apply migrations to the dev databases under ./data/
	cargo run --bin parley-message -- migrate
	cargo run --bin parley-receipt -- migrate
	cargo run --bin parley-notification -- migrate

clean: ## Remove build output, dev data and tools
	rm -rf target data .tools
