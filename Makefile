# The two commands of the README, and the checks CI runs.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup dev test lint typecheck unit clean bench

setup:
	./scripts/setup

dev: setup
	$(VENV)/bin/schedagent dev --agents $(or $(AGENTS),3)

lint: setup
	$(VENV)/bin/ruff check agent tests
	$(VENV)/bin/ruff format --check agent tests

typecheck: setup
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest -q -p no:cacheprovider

unit: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/test_config.py tests/test_spec.py \
		tests/test_placement.py tests/test_transitions.py tests/test_runner.py

clean:
	rm -rf $(VENV) build dist *.egg-info agent/*.egg-info

bench: setup
	$(PY) bench/run.py
