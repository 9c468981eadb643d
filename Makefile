# The two commands of the README: `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
# the pinned buf CLI (tools/buf, npm ci by bootstrap): lints the proto, checks it against the
# committed baseline image of the last released API (protos/baseline.binpb)
BUF := tools/buf/node_modules/.bin/buf

.PHONY: bootstrap test lint typecheck unit demo proto bench clean

bootstrap:
	@scripts/bootstrap.sh

lint: bootstrap
	$(VENV)/bin/ruff check broker clients tests bench
	$(VENV)/bin/ruff format --check broker clients tests bench
	$(BUF) lint
	$(BUF) breaking --against protos/baseline.binpb

typecheck: bootstrap
	$(VENV)/bin/mypy broker clients tests bench

unit: bootstrap
	$(PY) -m pytest -q -ra

test: bootstrap lint typecheck unit

demo: bootstrap
	$(PY) -m broker.demo

proto: bootstrap
	$(PY) -m broker.server.protogen
	$(PY) clients/python/tools/protogen.py

bench: bootstrap
	$(PY) bench/sign.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache tests/peer/node_modules tools/buf/node_modules
