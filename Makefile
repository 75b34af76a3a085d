# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUF := node_modules/.bin/buf
INSTALLED := $(VENV)/.installed

.PHONY: install redis-server chromium kubectl test lint check protos demo bench bench-peers clean

# torch is pinned: 2.13.0 resolves to the CPU build; an unpinned torch pulls
# several GB of CUDA wheels.
$(INSTALLED): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[services,inference,s3,otel,dev]'
	touch $@

# package.json pins buf exactly; npm's lock file cannot record buf's
# per-platform optional packages portably, so none is kept.
$(BUF): package.json
	npm install --no-audit --no-fund --no-package-lock
	touch $@

install: $(INSTALLED) $(BUF) redis-server chromium kubectl

# The Redis queue's tests run a real redis-server (tests/redis_server.py): Debian's package, installed
# where apt can; elsewhere install Redis >= 6.2 yourself.
redis-server:
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } || \
		{ echo "redis-server is missing and apt-get cannot install it here: install Redis >= 6.2"; exit 1; }

# The playground's browser tests drive a real headless chromium through its driver (tests/browser/): Debian's
# chromium and chromium-driver packages, installed where apt can; elsewhere install both yourself.
chromium:
	@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || { [ "$$(id -u)" = 0 ] && \
		command -v apt-get >/dev/null && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
		{ echo "chromium or chromedriver is missing and apt-get cannot install them here: install both"; exit 1; }

# The Kubernetes manifests' tests render them with `kubectl kustomize` (tests/deploy/): Debian's
# kubernetes-client package, installed where apt can; elsewhere install kubectl yourself.
kubectl:
	@command -v kubectl >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client; } || \
		{ echo "kubectl is missing and apt-get cannot install it here: install kubectl"; exit 1; }

lint: $(BUF)
	$(BUF) lint

# Regenerate the committed stubs in sdk/v1 after editing protos/.
protos: $(INSTALLED)
	$(BIN)/python scripts/gen-protos

# Lint, format and types; settings in pyproject.toml ([tool.ruff], [tool.mypy]).
# `ruff check --fix .` and `ruff format .` apply what ruff can fix itself.
check: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/typecheck.py

test: install lint check
	$(BIN)/python -m pytest

demo: $(INSTALLED)
	$(BIN)/python scripts/demo.py

# bench/peers.py's peer servers, each in a virtualenv of its own under bench/.peers (never .venv: their pins
# must not move Ferry's): the peer at the release measured, torch pinned as above, and Ferry itself (its
# core dependencies, Pillow and yarl) so the peer imports the Upscaler's own torch code.
PEERS := cog==0.23.1 litserve==0.2.19 bentoml==1.4.40
PEER_VENVS := $(foreach peer,$(PEERS),bench/.peers/$(firstword $(subst ==, ,$(peer)))/.installed)

bench/.peers/%/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv bench/.peers/$*
	bench/.peers/$*/bin/python -m pip install -q torch==2.13.0 pillow yarl $(filter $*==%,$(PEERS))
	bench/.peers/$*/bin/python -m pip install -q -e .
	touch $@

# The benchmarks (minutes; never part of `make test`). ffmpeg and aria2 are only baselines (bench/encode.py,
# bench/download.py): installed where apt can; without them those lines say so.
# bench/request_queue.py runs a redis-server of its own.
bench: $(INSTALLED) redis-server $(PEER_VENVS)
	command -v ffmpeg >/dev/null && command -v aria2c >/dev/null || { [ "$$(id -u)" = 0 ] && \
		command -v apt-get >/dev/null && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg aria2; } || \
		echo "ffmpeg or aria2 is not installed: bench/encode.py and bench/download.py report their lines as such"
	$(BIN)/python bench/download.py
	$(BIN)/python bench/encode.py
	$(BIN)/python bench/inference.py
	$(BIN)/python bench/request_queue.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/observability.py
	$(BIN)/python bench/peers.py

# The peer benchmark alone (about 8 minutes on 2 cores; `.venv/bin/python bench/peers.py --quick` about 2).
bench-peers: $(INSTALLED) $(PEER_VENVS)
	$(BIN)/python bench/peers.py

clean:
	rm -rf $(VENV) bench/.peers node_modules .demo-data .pytest_cache .mypy_cache .ruff_cache build/typecheck
