# Yikatong Edge — the two commands: `make demo` and `make test`.
# Each does its own setup: missing Debian packages (sudo when not root), a virtual
# environment in .venv, the project with its extras. Running either twice is quick.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEB_PACKAGES := mosquitto pcscd vsmartcard-vpcd libpcsclite-dev swig libzbar0 gcc make postgresql \
                python3-venv python3-dev espeak-ng sox alsa-utils chromium chromium-driver
VOICE_DIR ?= build/voices
PYTEST_ARGS ?=
CARDS ?= sim
PROFILE ?= bus_validator
# the demo speaks mutual TLS with an enrolled terminal (docs/security.md); TLS= for plain MQTT
TLS ?= --tls
FUZZ_EXAMPLES ?= 10000

.PHONY: demo test fuzz lint typecheck bench bench-sd deb venv firmware clean install uninstall \
        voices install-check

# voice clips (Mandarin, espeak-ng) for the prompt driver's player; its voice_dir
voices: $(STAMP)
	.venv/bin/python -m drivers.voice $(VOICE_DIR)

# pcscd and its vpcd readers are one per machine: a vpcd demo takes the same lock as the
# tests (a card another run put in the shared reader was once read as this demo's tap)
PCSCD_LOCK ?= /tmp/pcscd.lock
demo: $(STAMP) firmware
	$(if $(filter vpcd,$(CARDS)),flock $(PCSCD_LOCK)) $(BIN)/ykt demo --cards $(CARDS) --profile $(PROFILE) $(TLS)

test: $(STAMP) firmware
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

# The parser properties of tests/test_fuzz_parsers.py and the QR verifier's of
# tests/test_qr_fuzz.py with a long, random budget (hypothesis profile "fuzz"; `make test`
# runs the same files with the small "ci" one).
# docs/testing.md says what each target covers and how to replay a failure.
fuzz: $(STAMP) firmware
	YKT_HYPOTHESIS_PROFILE=fuzz YKT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) \
	  $(BIN)/pytest -q tests/test_fuzz_parsers.py tests/test_qr_fuzz.py $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# a bench that uses pcscd and its vpcd readers takes the machine-wide pcscd lock, as the
# tests and `make demo CARDS=vpcd` do (one ran beside a pcsc test and put its card there)
bench: $(STAMP) firmware
	@for b in bench/bench_*.py; do m=$${b%.py}; [ "$$m" = bench/bench_storage ] && continue; \
	  lock=; grep -q "simulator.pcscd" $$b && lock="flock $(PCSCD_LOCK)"; \
	  echo "== $$m"; $$lock $(BIN)/python -m $${m//\//.} || exit 1; done

# Taps during policy I/O on an emulated SD card (root: a throttled loop device, its
# backing file in RAM), on this machine's disk with the SD layout's partitions, and on the
# bare disk; three runs each (issue 15; bench/bench_storage.py, bench/sdcard.py)
BENCH_SD_ARGS ?= --runs 3
bench-sd: $(STAMP)
	$(BIN)/python -m bench.bench_storage --storage sd --card-backing /dev/shm $(BENCH_SD_ARGS)
	$(BIN)/python -m bench.bench_storage --storage disk-parts $(BENCH_SD_ARGS)
	$(BIN)/python -m bench.bench_storage --storage disk $(BENCH_SD_ARGS)

firmware:
	@if [ -f firmware_stubs/gate_controller/Makefile ]; then $(MAKE) -s -C firmware_stubs/gate_controller; fi

# Debian packages: install only the missing ones.
deb:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml | deb
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,test]'
	@$(BIN)/python -m pip install -q -e '.[sm2]' 2>/dev/null || \
	  echo "note: tongsuopy (SM2) has no wheel here; SM2 tests will be skipped"
	@touch $(STAMP)

# install on this machine (or into DESTDIR=... as a staging root): docs/operations.md
install:
	scripts/install install $(if $(DESTDIR),--destdir $(DESTDIR)) $(if $(ROLE),--role $(ROLE))

uninstall:
	scripts/install uninstall $(if $(DESTDIR),--destdir $(DESTDIR)) $(if $(ROLE),--role $(ROLE))

# a full install on a fresh debootstrap'ed Debian 12 root (minutes; not part of `make test`):
# scripts/install-check, docs/testing.md. The Debian packages are cached in var/install-check.
install-check:
	@command -v debootstrap >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends debootstrap; }
	$(SUDO) scripts/install-check $(INSTALL_CHECK_ARGS)

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
	@if [ -f firmware_stubs/gate_controller/Makefile ]; then $(MAKE) -s -C firmware_stubs/gate_controller clean; fi
