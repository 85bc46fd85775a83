# The headend's build, checks and tools. `make help` lists the targets.
#
# Everything runs from the repository root and installs what it needs: Python tools in
# .venv (pinned in requirements-dev.txt), the Rust extension built by maturin in release
# mode into the source tree (headend/_core*.so).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
export VIRTUAL_ENV := $(VENV)
export PATH := $(BIN):$(HOME)/.cargo/bin:$(PATH)
# pyo3 builds against the venv's interpreter.
export PYO3_PYTHON := $(BIN)/python

RUST_SOURCES := $(shell find rust_core/src -name '*.rs') rust_core/Cargo.toml Cargo.toml Cargo.lock
SIM_SOURCES := $(shell find loadtest/sim/src -name '*.rs') loadtest/sim/Cargo.toml
SIM := target/release/headend-sim
FUZZ_SECONDS ?= 60
# e.g. make run DEMO_ARGS="--meters 5000 --speed 120 --http-port 8081"
DEMO_ARGS ?=

.PHONY: help
help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Debian packages: the situation room's JavaScript libraries (served from
# /usr/share/javascript, nothing from the web), the browser its tests drive, the
# NATS server (JetStream) that links region nodes to the centre, and the Digital Chart
# of the World (the map's country outline).
SYSTEM_PACKAGES := chromium libjs-leaflet libjs-chart.js nats-server gmt-dcw
$(VENV)/.system: Makefile | $(BIN)/python
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	touch $@

$(VENV)/.deps: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

$(VENV)/.built: $(RUST_SOURCES) pyproject.toml $(VENV)/.deps
	$(BIN)/maturin develop --release --quiet
	touch $@

# The situation room's country outline, from gmt-dcw (nothing is fetched at run time).
DCW := /usr/share/gmt-dcw/dcw-gmt.nc
OUTLINE := headend/web/static/outline.json
$(OUTLINE): tools/outline.py $(VENV)/.system $(VENV)/.deps
	$(BIN)/python tools/outline.py $(DCW) $@

$(SIM): $(RUST_SOURCES) $(SIM_SOURCES)
	cargo build --quiet --release -p headend-sim
	touch $@

.PHONY: venv
venv: $(VENV)/.deps ## create .venv with the pinned tools

.PHONY: build
build: $(VENV)/.built $(SIM) $(VENV)/.system $(OUTLINE) ## build the Rust extension (release), the fleet simulator and the map outline

.PHONY: run
run: build ## build, then the full demo: 20,000 simulated meters, the head-end, the situation room
	$(BIN)/headend demo $(DEMO_ARGS)

.PHONY: samples
samples: build ## decode the sample captures (Green Book examples, a real meter's push)
	@echo "== Green Book examples (keys 000102..0F / D0D1..DF) =="
	$(BIN)/headend decode --ek 000102030405060708090A0B0C0D0E0F --ak D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF \
		--system-title 4D4D4D0000BC614E --pretty - < protocols/samples/green-book.hex
	@echo "== A real meter's encrypted push =="
	$(BIN)/headend decode --ek 4D5944554D4D59474C4F42414C4B4559 --ak 4D5944554D4D59474C4F42414C4B4559 \
		--pretty - < protocols/samples/real-push.hex
	@echo "== Plain frames: HDLC link set-up, GET, a push =="
	$(BIN)/headend decode --pretty - < protocols/samples/plain.hex

.PHONY: test
test: build lint ## build everything and run every test and check
	cargo test --quiet --workspace
	# The slowest tests named at the end: `make test` must stay under 15 minutes.
	$(BIN)/python -m pytest -q --durations=12

.PHONY: package-check
package-check: build ## build the wheel, install it in a fresh venv and run headend outside the source tree
	rm -rf target/package-check
	$(BIN)/maturin build --release --quiet --out target/package-check/dist
	$(PYTHON) -m venv target/package-check/venv
	target/package-check/venv/bin/python -m pip install --quiet target/package-check/dist/*.whl
	cd /tmp && $(CURDIR)/target/package-check/venv/bin/python $(CURDIR)/tools/package_check.py

.PHONY: lint
lint: build ## clippy, rustfmt, ruff, mypy, stubtest, generated-code check
	cargo clippy --quiet --workspace --all-features --all-targets -- -D warnings
	cargo fmt --all -- --check
	$(BIN)/ruff check headend tests tools bench loadtest
	$(BIN)/ruff format --check headend tests tools bench loadtest
	$(BIN)/python -m mypy
	$(BIN)/python -m mypy.stubtest headend._core
	$(BIN)/python tools/gen_codes.py --check

.PHONY: codes
codes: ## regenerate rust_core/src/codes.rs from protocols/dlms_codes.toml
	$(PYTHON) tools/gen_codes.py

.PHONY: bench
bench: build ## micro-benchmarks (pytest-benchmark); results in bench/results/
	$(BIN)/python -m pytest bench -m benchmark -p no:cacheprovider \
		--benchmark-columns=min,median,mean,ops,rounds \
		--benchmark-json=bench/results/codec-latest.json

.PHONY: fuzz
fuzz: ## fuzz the decoders for FUZZ_SECONDS per target (needs the nightly toolchain)
	cargo +nightly --version >/dev/null
	cargo install --quiet --locked cargo-fuzz 2>/dev/null || cargo install --quiet cargo-fuzz
	cd rust_core && for t in $$(cargo +nightly fuzz list); do \
		cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 || exit 1; \
	done

.PHONY: clean
clean: ## remove build products and the virtual environment
	cargo clean
	rm -rf $(VENV) headend/_core*.so .pytest_cache .ruff_cache .mypy_cache
