# The one interface for people and CI. `make help` lists the targets.
UV ?= $(shell command -v uv 2>/dev/null || echo .venv-uv/bin/uv)
PYTEST_ARGS ?=

.PHONY: help install run test bench bench-hooks chaos lint typecheck diagrams

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

bench: install .venv-arq/bin/python ## speed beside the raw clients: docs/benchmarks.md (QUICK=1: a smoke run)
	.venv/bin/python -m bench $(if $(QUICK),--quick,)

# arq, the async table's peer, in a venv of its own: never one of the project's dependencies.
# Without it (no registry) the bench leaves out the arq row.
.venv-arq/bin/python: $(UV)
	-$(UV) venv -q .venv-arq && $(UV) pip install -q --python .venv-arq/bin/python arq==0.28.0

bench-hooks: install ## what the lifecycle hooks and the metrics plugin cost: docs/observability-cost.md
	.venv/bin/python -m bench.hooks --docs docs

chaos: install ## reliability under faults: docs/reliability.md (minutes; not part of make test)
	.venv/bin/python -m chaos $(if $(ONLY),--only $(ONLY),)
	$(if $(ONLY),,.venv/bin/python -m chaos.quorum)  # quorum queues on a 3-node cluster of its own

lint: install ## ruff check and format check
	.venv/bin/ruff check packages tests bench chaos
	.venv/bin/ruff format --check packages tests bench chaos

typecheck: install ## mypy --strict on every package's source
	.venv/bin/mypy packages/*/src bench chaos

diagrams: ## render docs/*.dot into PNG images (needs graphviz's dot)
	for f in docs/*.dot; do dot -Tpng -Gdpi=110 "$$f" -o "$${f%.dot}.png"; done
