# Two commands for a fresh machine (see README): `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-all lint bench

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,xtb,chgnet]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/ldsm design

test: $(STAMP)
	$(BIN)/ruff check pipeline models flows tests benchmarks
	$(BIN)/pytest

test-all: $(STAMP)
	$(BIN)/pytest -m ""

lint: $(STAMP)
	$(BIN)/ruff check pipeline models flows tests benchmarks
	$(BIN)/ruff format --check pipeline models flows tests benchmarks
