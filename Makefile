# Quick start: `make demo` (set up, run the demo) and `make test` (set up, run the tests); `make docs` builds the site.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VIEWER := src/vesalius/viewer
NIIVUE := $(VIEWER)/node_modules/.package-lock.json
BROWSER := $(VENV)/.browser-checked
ORTHANC := $(VENV)/.orthanc-checked
AS_ROOT_WITH_APT := [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1

.PHONY: setup demo test lint docs clean

setup: $(STAMP) $(NIIVUE) $(BROWSER) $(ORTHANC)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

# NiiVue for the viewer, from package-lock.json (npm; as root, npm itself comes from apt-get when missing).
$(NIIVUE): $(VIEWER)/package.json $(VIEWER)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { $(AS_ROOT_WITH_APT) && apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; } || true
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(VIEWER) --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the viewer cannot draw until NiiVue is installed (npm ci --prefix $(VIEWER))"; fi

# Chromium for the browser tests: apt-get install when missing and root (checked once; rm $@ to check again).
$(BROWSER): | $(STAMP)
	@command -v chromium >/dev/null 2>&1 || { $(AS_ROOT_WITH_APT) && apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "Chromium could not be installed: the browser tests will skip"
	@touch $@

# Orthanc with its DICOMweb plugin, the real PACS the PACS tests start on 127.0.0.1 (apt-get when missing and root).
$(ORTHANC): | $(STAMP)
	@{ command -v Orthanc >/dev/null 2>&1 && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; } || \
		{ $(AS_ROOT_WITH_APT) && apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null; } || \
		echo "Orthanc could not be installed: the PACS tests will skip"
	@touch $@

demo: setup
	$(BIN)/vesalius demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

# The documentation site (MkDocs; API reference generated from the docstrings), strict: a broken reference fails.
docs: setup
	DISABLE_MKDOCS_2_WARNING=true NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) vesalius_work site
