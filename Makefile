# autoextend: `make demo` and `make test` set everything up themselves (Debian 12, root).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := qemu-system-x86 qemu-utils lvm2 libvirt-daemon-system libvirt-dev pkg-config \
	busybox-static cpio sanlock gcc python3-venv python3-dev util-linux strace prometheus libfuse2 \
	man-db groff-base
APT_STAMP := $(VENV)/.apt-done
PIP_STAMP := $(VENV)/.pip-done
GUEST_STAMP := $(VENV)/.guest-done
PYTEST_ARGS ?=
RIG_WORKERS ?= 4
SIM_SEEDS ?= 40
SIM_DURATION ?= 200000

.PHONY: all setup apt venv guest test unit demo bench lint clean sim chaos

all: test

setup: apt venv guest

# apt: install only what is missing, so a second run costs one dpkg query.
apt: $(APT_STAMP)
# Re-checked when the Makefile (the package list) changes: only missing packages are installed.
$(APT_STAMP): Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

venv: $(PIP_STAMP)
$(PIP_STAMP): pyproject.toml $(APT_STAMP) | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $@

# The lab guest (Debian cloud kernel + busybox initramfs), cached under /var/cache/autoextend.
guest: $(GUEST_STAMP)
$(GUEST_STAMP): $(PIP_STAMP) $(wildcard autoextend/lab/*.py)
	$(BIN)/autoextend lab build-guest
	touch $@

# Every test, in two stages. First the unit tests and the slow tests that need only CPU and
# private files (marker cpu: the simulation, the lease torture, packaging), on every core (a
# test file stays on one worker: module fixtures start once), with
# the unit guard on. Then the tests that use QEMU, libvirtd, lvm2, loop devices, sanlock and
# Prometheus, RIG_WORKERS at a time (each worker is its own pytest session: its own lab
# directory, libvirtd, sanlock namespaces, uniquely named VGs, and a leftover check that looks
# only at what that session made; a test file stays on one worker). Both stages always run;
# exit 5 (nothing selected, e.g. by a path in PYTEST_ARGS) is not a failure. The rig stage
# prints its 40 slowest tests (where the suite's time goes).
PYTEST_STAGE = || { r=$$?; [ $$r -eq 5 ] || rc=$$r; }
test: setup
	@rc=0; \
	AUTOEXTEND_UNIT=1 $(BIN)/pytest -m "not slow or cpu" -n auto --dist loadfile $(PYTEST_ARGS) $(PYTEST_STAGE); \
	$(BIN)/pytest -m "slow and not cpu" -n $(RIG_WORKERS) --dist loadfile --durations=40 $(PYTEST_ARGS) $(PYTEST_STAGE); \
	exit $$rc

# Fast tests only: no QEMU, libvirtd, lvm2, loop devices, sanlock or Prometheus (the unit
# guard, autoextend/lab/unitguard.py, fails a test that starts one: mark it slow).
# Fewer hypothesis examples (profile "unit", tests/hypo.py; make test runs the full counts).
# Bytecode is cached even where PYTHONDONTWRITEBYTECODE is set: without the cache every
# worker and every `python -m autoextend` child compiles the package again, and pytest
# rewrites every test module's asserts again (about 5 s of CPU per worker).
# One worker more than the cores: many unit tests wait on short real timers (lease renewals,
# reload debounces), and a third worker fills those waits (2 cores: 43 s -> 37 s).
UNIT_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
unit: venv
	env -u PYTHONDONTWRITEBYTECODE AUTOEXTEND_UNIT=1 $(BIN)/pytest -m "not slow" -n $(UNIT_WORKERS) \
		--hypothesis-profile=unit $(PYTEST_ARGS)

# A longer soak of the deterministic simulation with random seeds (a failing seed prints
# its trace and the command that replays it).
sim: venv
	$(BIN)/python -m sim --seeds $(SIM_SEEDS) --duration $(SIM_DURATION) --hosts 4

# The chaos soak of the real system (docs/chaos.md): 3 hosts, 4 TCG guests, CHAOS_DURATION
# seconds of seeded faults (a random seed, printed first; CHAOS_ARGS="--seed N" replays one).
CHAOS_DURATION ?= 600
CHAOS_ARGS ?=
chaos: setup
	$(BIN)/python -m bench.chaos --duration $(CHAOS_DURATION) --hosts 3 --guests 4 $(CHAOS_ARGS)

demo: setup
	$(BIN)/autoextend demo

bench: setup
	$(BIN)/python -m bench.run_all

lint: venv
	$(BIN)/ruff check autoextend tests bench sim
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
