# The two commands of the README, and the checks CI runs.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup dev test lint typecheck unit clean bench lint-ansible deb package-test e2e

setup:
	./scripts/setup

dev: setup
	$(VENV)/bin/schedagent dev --agents $(or $(AGENTS),3)

lint: setup
	$(VENV)/bin/ruff check agent tests
	$(VENV)/bin/ruff format --check agent tests

typecheck: setup
	$(VENV)/bin/mypy

# ansible/ and vagrant/: yamllint, the playbook's syntax under Debian's ansible-core,
# ansible-lint's production profile (offline, its own ansible-core from .venv), and
# the Vagrantfile (the providers' own settings are not checked: no provider here).
lint-ansible: setup
	cd ansible && ../$(VENV)/bin/yamllint --strict .
	cd ansible && /usr/bin/ansible-playbook --syntax-check -i inventories/example deploy.yml
	cd ansible && PATH="$(CURDIR)/$(VENV)/bin:$$PATH" ansible-lint
	cd vagrant && vagrant validate --ignore-provider

# tests/e2e/ is `make e2e`: .ci/run runs it after this.
test: lint typecheck lint-ansible
	$(VENV)/bin/pytest -q -p no:cacheprovider --ignore=tests/e2e

# The Debian package (packaging/): dist/schedagent_<version>_amd64.deb, the version from
# packaging/debian/changelog; `make deb VERSION=0.1.1` builds another (for upgrade tests).
deb:
	packaging/build-deb $(VERSION)

# The .deb built three times (one version twice, compared byte for byte), linted,
# then installed, upgraded and purged in a fresh bookworm root
# (tests/packaging/test_deb.py; part of `make test`).
package-test: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/packaging/test_deb.py

# End to end (tests/e2e/, docs/e2e.md): make deb twice, three fresh Debian hosts with
# systemd as PID 1 (systemd-nspawn) on a bridge of their own, ansible/deploy.yml onto
# them, then jobs, journald, a killed leader, an upgrade under running jobs and a host
# that loses power. Needs root; the hosts' root is cached. Part of .ci/run.
# SCHEDAGENT_E2E_HOSTS=qemu make e2e: the same with qemu TCG VMs as hosts (not in CI).
e2e: setup
	$(VENV)/bin/pytest -q -x -p no:cacheprovider tests/e2e

unit: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit

clean:
	rm -rf $(VENV) build dist *.egg-info agent/*.egg-info

bench: setup
	$(PY) bench/run.py
