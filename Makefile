# Two commands matter: `make serve` and `make test`. Both set up what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := contracts/node/node_modules/.installed
CHROMIUM := /usr/bin/chromium
# apt-get needs root; elsewhere sudo asks.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
PIP := $(BIN)/pip --disable-pip-version-check --quiet

.PHONY: setup serve test lint contracts contracts-ray models bench bench-ray bench-gating bench-webrtc docs-html lock

$(STAMP): requirements.lock pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.lock
	$(PIP) install --no-deps -e .
	$(PIP) install --no-deps -e ./clients/python
	touch $(STAMP)

# The browser page's tests drive Debian's chromium through Playwright (Playwright's own browser
# download is not used).
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq chromium

# The WebRTC tests relay through Debian's coturn; the operator tests scrape with Debian's prometheus
# (and check rules with its promtool). Installed like chromium, when missing.
TURNSERVER := /usr/bin/turnserver
PROMETHEUS := /usr/bin/prometheus

$(TURNSERVER):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq coturn

$(PROMETHEUS):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq prometheus

$(NODE_STAMP): contracts/node/package-lock.json
	cd contracts/node && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

setup: $(STAMP) $(NODE_STAMP)

serve: $(STAMP)
	$(BIN)/forgesyte-stream serve

# The linters, the project's tests, then the contract suite (contracts/README.md) three ways: against the
# self-started Litestar server and the alternate websockets adapter, and against a separately
# started `forgesyte-stream serve` given to it with --target, as another team would run it.
test: $(STAMP) $(NODE_STAMP) $(CHROMIUM) $(TURNSERVER) $(PROMETHEUS)
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest
	$(MAKE) --no-print-directory contracts

# ruff over everything; mypy --strict over domain/, application/ and adapters/; lint-imports for the
# hexagon's import contracts (pyproject.toml holds all three configurations).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

contracts: $(STAMP)
	$(BIN)/pytest contracts
	$(BIN)/python -m contracts.against_serve
	$(BIN)/python -m tests.ray.contracts_on_ray

# The contract suite against `serve` running its pipelines on Ray (a local Ray instance in the server).
contracts-ray: $(STAMP)
	$(BIN)/python -m tests.ray.contracts_on_ray

# Regenerate the clients' message types after editing asyncapi.yaml: contracts/generated/,
# clients/python/forgesyte_stream_client/generated/ and clients/web/messages.js.
models: $(STAMP)
	$(BIN)/python -m contracts.generate_models

bench: $(STAMP)
	$(BIN)/python bench/stream_bench.py
	$(BIN)/python bench/client_bench.py

# Gated pipelines against their ungated twins on one real server (docs/gating.md, docs/performance.md).
bench-gating: $(STAMP)
	$(BIN)/python bench/gating.py

# WebRTC (WHIP, VP8 and H.264) against the WebSocket on one server, loopback only: bytes per frame, faces boxed,
# capture-to-result latency, overload at 3x (docs/performance.md). About 2.5 minutes; --quick for ~40 s.
bench-webrtc: $(STAMP)
	$(BIN)/python bench/webrtc_bench.py

# The Ray executor against threads, and a two-node Ray cluster on this machine (docs/performance.md).
# The two-node part runs in network namespaces it creates: root, and `ip` from iproute2.
bench-ray: $(STAMP)
	command -v ip >/dev/null || (apt-get update && apt-get install -y iproute2)
	$(BIN)/python bench/ray_bench.py

# HTML documentation of the contract into docs/html/ (fetches @asyncapi/generator and its
# HTML template from the npm registry on first use, so it is not part of `make test`).
docs-html:
	PUPPETEER_SKIP_DOWNLOAD=1 npx --yes -p @asyncapi/generator@2 -p @asyncapi/html-template@3 \
		ag asyncapi.yaml @asyncapi/html-template -o docs/html --force-write

# Re-pin every dependency after editing requirements.in.
lock: $(STAMP)
	$(PIP) install uv
	$(BIN)/uv pip compile requirements.in --python-version 3.11 -o requirements.lock
