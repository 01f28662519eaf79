# The one interface for people and CI. `make help` lists the targets.
UV ?= $(shell command -v uv 2>/dev/null || echo .venv-uv/bin/uv)
PYTEST_ARGS ?=

.PHONY: help install run test test-long bench bench-compare bench-hooks chaos lint typecheck diagrams

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(UV):
	python3 -m venv .venv-uv && .venv-uv/bin/pip install -q uv

# Bytecode compiled once, at install: where PYTHONDONTWRITEBYTECODE=1 (as on the CI
# machines) nothing caches it, and every interpreter the tests start (CLI commands,
# workers, children) compiled its imports again: `asynctask submit` on AMQP took 4-5 s
# on a loaded 2-core machine, 1.7 s with the bytecode (README, Testing).
install: $(UV) ## install every package of the workspace into .venv (uv installs uv if missing)
	$(UV) sync --all-packages --frozen --compile-bytecode
	.venv/bin/python -m compileall -q packages tests bench chaos >/dev/null

run: install ## the main job: submit demo tasks and run workers on the embedded filesys transport
	.venv/bin/asynctask-demo

# the tests marked long (pyproject.toml) are left out of `make test`, CI's 20-minute budget;
# its files run in TEST_WORKERS processes at once (pytest-xdist, a file each: a file's
# fixtures and order stay together): the suite mostly waits on servers and child processes,
# and run one at a time it took 35 minutes in CI (2 cores)
TEST_WORKERS ?= 3
test: install ## the test suite CI runs, without the tests marked long (CI's budget: 20 minutes)
	.venv/bin/pytest -m "not long" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-long: install ## only the tests marked long: whole-cluster contracts, many-round fault runs (minutes)
	.venv/bin/pytest -m long $(PYTEST_ARGS)

bench: install $(if $(PEERS),.venv-peers/bin/python,) ## speed beside the raw clients and (PEERS=1) the peers: docs/benchmarks.md (QUICK=1: a smoke run)
	.venv/bin/python -m bench $(if $(QUICK),--quick,) $(if $(PEERS),--peers,)

# Dramatiq, Huey, PgQueuer and arq, pinned, in a venv of their own: never among the
# project's dependencies. Only PEERS=1 makes it; without it the peer rows are absent.
.venv-peers/bin/python: $(UV) bench/peers/requirements.txt
	$(UV) venv -q --allow-existing .venv-peers
	$(UV) pip install -q --python .venv-peers/bin/python -r bench/peers/requirements.txt

bench-compare: install ## the bench of BASE (a commit) and of this tree in one run (quick unless FULL=1; PROBE=1: submit figures only; UNTRACKED=1: this tree untracked, with BASE's plugins only)
	.venv/bin/python -m bench.compare $(BASE) $(if $(FULL),,--quick) $(if $(ONLY),--only $(ONLY),) $(if $(PROBE),--probe,) $(if $(UNTRACKED),--untracked --base-plugins,)

bench-hooks: install ## what the lifecycle hooks and the metrics plugin cost: docs/observability-cost.md
	.venv/bin/python -m bench.hooks --docs docs

chaos: install ## reliability under faults: docs/reliability.md (minutes; not part of make test)
	.venv/bin/python -m chaos $(if $(ONLY),--only $(ONLY),)
	$(if $(ONLY),,.venv/bin/python -m chaos.quorum)  # quorum queues on a 3-node cluster of its own
	$(if $(ONLY),,.venv/bin/python -m chaos.failover)  # a Redis master killed mid-drain: cluster and Sentinel, with and without WAIT

lint: install ## ruff check and format check
	.venv/bin/ruff check packages tests bench chaos
	.venv/bin/ruff format --check packages tests bench chaos

typecheck: install ## mypy --strict on every package's source
	.venv/bin/mypy packages/*/src bench chaos

diagrams: ## render docs/*.dot into PNG images (needs graphviz's dot)
	for f in docs/*.dot; do dot -Tpng -Gdpi=110 "$$f" -o "$${f%.dot}.png"; done
