# The two commands of the README: `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
# the pinned buf CLI (tools/buf, npm ci by bootstrap): lints the proto, checks it against the
# committed baseline image of the last released API (protos/baseline.binpb)
BUF := tools/buf/node_modules/.bin/buf

.PHONY: bootstrap test lint typecheck unit demo proto bench clean lock compose-check

bootstrap:
	@scripts/bootstrap.sh

lint: bootstrap
	$(VENV)/bin/ruff check broker devtools clients tests bench
	$(VENV)/bin/ruff format --check broker devtools clients tests bench
	$(BUF) lint
	$(BUF) breaking --against protos/baseline.binpb

typecheck: bootstrap
	$(VENV)/bin/mypy broker devtools clients tests bench

# The suite runs on PYTEST_WORKERS pytest-xdist workers (it mostly waits on SoftHSM, node peers,
# gRPC servers and subprocesses, so more workers than cores pays); PYTEST_WORKERS=0 runs it
# serially in one process. Scheduling (long tests first, a module's expensive fixture built once):
# tests/parallel.py.
PYTEST_WORKERS ?= 4
unit: bootstrap
	$(PY) -m pytest -q -ra -n $(PYTEST_WORKERS)

test: bootstrap lint typecheck unit

demo: bootstrap
	$(PY) -m devtools.demo

proto: bootstrap
	$(PY) -m broker.server.protogen
	$(PY) clients/python/tools/protogen.py

bench: bootstrap
	$(PY) bench/sign.py

# requirements/{runtime,dev}.lock: exact versions with hashes for CPython 3.11 on linux x86_64
# (the image and CI install these). Pins already in a lock are kept; `UV_UPGRADE=--upgrade make
# lock` moves them. uv is one `pip install uv` away.
UV ?= uv
LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	--custom-compile-command 'make lock' --quiet $(UV_UPGRADE)
lock:
	$(UV) pip compile pyproject.toml --extra postgres $(LOCK_FLAGS) -o requirements/runtime.lock
	$(UV) pip compile pyproject.toml clients/python/pyproject.toml --extra dev --extra httpx \
		--extra requests $(LOCK_FLAGS) -o requirements/dev.lock

# validates docker-compose.yml with the installed compose tool (skipped, with a message, without one)
compose-check:
	@scripts/compose-check.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache tests/peer/node_modules tools/buf/node_modules
