# Gate — developer entry points. `make help` lists them.

SHELL := /usr/bin/env bash
CARGO ?= cargo
# Seconds each fuzz target runs for in `make fuzz`.
FUZZ_SECONDS ?= 60

.DEFAULT_GOAL := help
.PHONY: help setup test lint build demo bench fuzz

help:
	@echo "make test   set up PostgreSQL if needed, build once, run every test"
	@echo "make lint   rustfmt check and clippy with warnings as errors"
	@echo "make build  release build of the binaries (target/release/)"
	@echo "make demo   run the connector in front of a throwaway PostgreSQL"
	@echo "make bench  benchmarks (scripts/bench.sh, scripts/bench-mysql.sh, scripts/bench-ssh.sh)"
	@echo "make fuzz   run each fuzz target for FUZZ_SECONDS (default 60)"

setup:
	scripts/test-setup.sh

# The binaries are built first: end-to-end tests run target/debug/gate-connector (through
# gate-test-support, which also runs `cargo build --bin gate-connector` to be sure it is fresh;
# after this step that is a no-op). `--no-run` builds every test binary before any test runs.
test: setup
	$(CARGO) build --workspace --bins --locked
	$(CARGO) test --workspace --locked --no-run
	$(CARGO) test --workspace --locked

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

build:
	$(CARGO) build --workspace --bins --release --locked

demo:
	scripts/demo.sh

# PostgreSQL (pgbench: direct, pgbouncer-TLS, Gate-TLS; idle sessions), then MySQL (sysbench:
# direct-TLS vs Gate-TLS), then SSH (OpenSSH direct vs through Gate: throughput, round trip).
# docs/benchmarks.md explains the figures.
bench:
	scripts/bench.sh
	scripts/bench-mysql.sh
	scripts/bench-ssh.sh

fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for target in $$(RUSTC_BOOTSTRAP=1 $(CARGO) fuzz list); do \
		echo "fuzz: $$target ($(FUZZ_SECONDS)s)"; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run "$$target" -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done
