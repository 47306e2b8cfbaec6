# Contactier: common tasks. `make help` lists them.
.PHONY: help run test lint fmt proto-lint build

BUF ?= npx --yes @bufbuild/buf@1.75.0

help:
	@echo "make run         run all four services in one process (SQLite files in ./data)"
	@echo "make test        run every test (PostgreSQL on 127.0.0.1:5432 must be up)"
	@echo "make lint        rustfmt check, clippy with warnings as errors, buf lint"
	@echo "make fmt         format the code"
	@echo "make build       release build of every binary"

run:
	cargo run --bin contactier

test:
	cargo test --workspace

lint: proto-lint
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

proto-lint:
	cd proto && $(BUF) lint

fmt:
	cargo fmt --all

build:
	cargo build --release --workspace --bins
