# Two commands on a fresh machine: `make run` and `make test`.
# Everything they need is installed here: the virtualenv, the Python
# packages (pinned in pyproject.toml) and, when root, the Debian packages.

PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
DEBS     := dash bash busybox-static mksh posh yash zsh shellcheck strace \
            bubblewrap gosu postgresql git curl procps
PYTEST_ARGS ?=
PORT     ?= 8080

.PHONY: help deps debs venv run stop test soak bench demo lint clean

help:
	@echo "make run    start the control plane with example workspaces (PORT=8080)"
	@echo "make stop   stop the example workspaces (they outlive the server)"
	@echo "make test   run the whole test suite"
	@echo "make demo   push, restart and check every example workspace end to end"
	@echo "make bench  run the benchmarks (prints comparisons against baselines)"
	@echo "make soak   long crash/consistency soak"

deps: debs venv

debs:
	@scripts/install-debs.sh $(DEBS)

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

run: deps
	$(BIN)/secretsd serve --demo --port $(PORT)

stop:
	@if [ -d var/runtime/sandbox ]; then $(BIN)/secretsd workspace stop --all --data var; fi

demo: deps
	$(BIN)/secretsd demo

test: deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

soak: deps
	SECRETSD_SOAK=1 SECRETSD_CRASH_ITERATIONS=10000 $(BIN)/python -m pytest \
	    tests/format/test_writer.py -k kill_9 $(PYTEST_ARGS)
	SECRETSD_SOAK=1 $(BIN)/python -m pytest tests/adversarial $(PYTEST_ARGS)

bench: deps
	$(BIN)/python bench/run.py

lint: deps
	shellcheck -s sh src/secretsd/format/sh/*
	shellcheck -e SC1091 examples/templates/*/*.sh examples/templates/bash-strict/lib/*.sh

clean: stop
	rm -rf $(VENV) var build dist src/*.egg-info
