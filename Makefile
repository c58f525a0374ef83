# Set-up and entry points. Everything a fresh machine needs is installed from here.
PYTHON ?= python3
VENV ?= .venv
# The local CPU wheel; override e.g. `make test TORCH='torch==2.5.1'`.
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-all test-avx2 lint bench docs clean arm-emulation browser

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile requirements-real.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,runtimes]"
	$(PY) -m pip install -q --no-deps -r requirements-real.txt
	touch $(STAMP)

demo: venv
	$(PY) examples/make_demo_model.py
	$(VENV)/bin/autoglm-compress examples/digits_cnn.pt --fp16 --target x86 \
		--calib examples/digits_calib.npz --eval examples/digits_eval.npz --samples 500 -o out/demo
	# INT8 + 200 QAT steps for x86 and cuda, from a recipe (the same as: autoglm-compress
	# examples/digits_cnn.pt --int8 --target x86 --target cuda --calib examples/digits_calib.npz
	# --eval examples/digits_eval.npz --samples 500 --qat-steps 200 -o out/demo-int8)
	$(VENV)/bin/autoglm-compress run examples/demo-int8.toml

bench: venv
	$(PY) bench/bench_int8.py
	$(PY) bench/bench_qat.py

# `make test`: everything but the tests marked slow (≤ 15 min on 2 cores, AVX2 or VNNI);
# `make test-all`: those too (real-model end-to-end sweeps).
test: venv arm-emulation browser
	$(PY) -m pytest -q -x -m "not slow" tests

test-all: venv arm-emulation browser
	$(PY) -m pytest -q tests

# `make test-avx2`: `make test` natively as on an AVX2 CPU without AVX-512/VNNI — tools/avx2.py
# masks CPUID (Linux CPUID faulting, needs cpuid_fault in /proc/cpuinfo and gcc; else one line,
# exit 2), so onnxruntime and torch run their AVX2 kernels at this machine's speed.
test-avx2: venv arm-emulation browser
	$(PY) tools/avx2.py $(PY) -m pytest -q -x -m "not slow" tests

# ARM artifacts also run on ARM code (tests/test_arm_emulation.py, --verify-arm): Debian's
# qemu-user and gcc, installed here when missing and run as root (else the tests skip, saying
# what to install); then the aarch64 root, wheels and instruction-count plugin, built once into
# ~/.cache/autoglm-compress/aarch64 (about 80 MB downloaded).
ARM_PKGS = $(if $(shell command -v qemu-aarch64),,qemu-user) $(if $(shell command -v gcc),,gcc)
arm-emulation: venv
	$(call apt_install,$(ARM_PKGS),the aarch64 tests skip)
	@$(PY) -m autoglm_compress.targets.arm_emulation

# tests/test_report_html.py renders report.html in a real headless browser: Debian's chromium,
# installed here when missing and run as root (else that test skips, saying what to install).
BROWSER_PKGS = $(if $(shell command -v chromium),,chromium)
browser:
	$(call apt_install,$(BROWSER_PKGS),the headless-browser check of report.html skips)

# $(call apt_install,PACKAGES,what happens without them): Debian packages installed when missing
define apt_install
	@if [ -n "$(strip $(1))" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && apt-get install -y -qq $(1) >/dev/null; \
		else echo "note: $(strip $(1)) missing (apt-get install -y $(strip $(1)), as root):" \
			"$(2)"; fi; \
	fi
endef

lint: venv
	$(VENV)/bin/ruff check .

docs: venv
	$(PY) -m autoglm_compress.targets.ops_doc > docs/arm_ops.md
	$(PY) -m autoglm_compress.cli_doc > docs/cli.md

clean:
	rm -rf $(VENV) out .pytest_cache
