# The one interface for people and CI. `make help` lists the targets.
UV ?= $(shell command -v uv 2>/dev/null || echo .venv-uv/bin/uv)
PYTEST_ARGS ?=

.PHONY: help install run test bench bench-compare bench-hooks chaos lint typecheck diagrams

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(UV):
	python3 -m venv .venv-uv && .venv-uv/bin/pip install -q uv

install: $(UV) ## install every package of the workspace into .venv (uv installs uv if missing)
	$(UV) sync --all-packages --frozen

run: install ## the main job: submit demo tasks and run workers on the embedded filesys transport
	.venv/bin/asynctask-demo

test: install ## run the whole test suite
	.venv/bin/pytest $(PYTEST_ARGS)

bench: install $(if $(PEERS),.venv-peers/bin/python,) ## speed beside the raw clients and (PEERS=1) the peers: docs/benchmarks.md (QUICK=1: a smoke run)
	.venv/bin/python -m bench $(if $(QUICK),--quick,) $(if $(PEERS),--peers,)

# Dramatiq, Huey, PgQueuer and arq, pinned, in a venv of their own: never among the
# project's dependencies. Only PEERS=1 makes it; without it the peer rows are absent.
.venv-peers/bin/python: $(UV) bench/peers/requirements.txt
	$(UV) venv -q --allow-existing .venv-peers
	$(UV) pip install -q --python .venv-peers/bin/python -r bench/peers/requirements.txt

bench-compare: install ## the bench of BASE (a commit) and of this tree in one run (quick unless FULL=1; PROBE=1: submit figures only)
	.venv/bin/python -m bench.compare $(BASE) $(if $(FULL),,--quick) $(if $(ONLY),--only $(ONLY),) $(if $(PROBE),--probe,)

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
