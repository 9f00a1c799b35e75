# comfyfleet: the two commands are `make run` and `make test`; everything they need
# (virtualenv, packages, generated code, buf) is installed by the targets below.
SHELL := /bin/bash
PY_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
GEN := gen
PROTOS := $(shell find proto/comfyfleet -name '*.proto')
BUF := node_modules/.bin/buf

.PHONY: all venv proto lint test test-fast run clean

all: proto

# The virtualenv; a .pth file puts the repo root and the generated code on sys.path.
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check -r requirements.txt
	$(PY) -c 'import site,os; open(os.path.join(site.getsitepackages()[0],"comfyfleet-dev.pth"),"w").write("$(CURDIR)\n$(CURDIR)/$(GEN)\n$(CURDIR)/sdk\n")'
	touch $@

venv: $(VENV)/.installed

# Generated code lives only in gen/; never edit it by hand.
$(GEN)/.stamp: $(PROTOS) $(VENV)/.installed
	rm -rf $(GEN) && mkdir -p $(GEN)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -I proto -I proto/third_party \
	  --python_out=$(GEN) --grpc_python_out=$(GEN) --mypy_out=$(GEN) --mypy_grpc_out=$(GEN) \
	  $(PROTOS)
	$(PY) -m grpc_tools.protoc -I proto -I proto/third_party --include_imports --include_source_info \
	  --descriptor_set_out=$(GEN)/comfyfleet.pb $(PROTOS)
	touch $@

proto: $(GEN)/.stamp

# buf comes from the npm registry, pinned by package-lock.json.
$(BUF): package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $@

lint: proto $(BUF)
	$(BUF) lint
	$(VENV)/bin/ruff check services tests deploy sdk bench
	$(VENV)/bin/mypy
	$(PY) -m deploy.k8s.check_chart

test: proto
	$(PY) -m pytest

run: proto
	$(PY) -m services.devrun

# The load-and-soak test (tests/soak) for SOAK_SECONDS of load (`make test` runs it for 60 s).
SOAK_SECONDS ?= 300
.PHONY: soak
soak: proto
	SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest tests/soak -m soak

# Benchmarks (bench/, see bench/__init__.py): figures against baselines measured in the same run.
# `make bench QUICK=1` takes under a minute; PROFILE=1 writes py-spy profiles to bench/profiles/.
.PHONY: bench
bench: proto
	$(PY) -m bench.run $(if $(QUICK),--quick) $(if $(PROFILE),--profile)

clean:
	rm -rf $(GEN) var
