# The two set-up commands of the README: `make test` and `make demo`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Two test processes, each with its own database, topic prefix and servers; a module stays in one.
TEST_WORKERS ?= 2

.PHONY: test test-cluster demo install bench clean web

$(PY):
	python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 -m 'not solo and not slow' $(PYTEST_ARGS)
	$(PY) -m pytest -q --durations=5 -m solo $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] || exit $$rc  # 5: none selected

# The slow tests: several nodes in a cluster, and the smoke test against a private RabbitMQ.
test-cluster: $(STAMP)
	$(PY) -m pytest -q --durations=5 -m slow tests/cluster tests/e2e/test_rabbitmq.py $(PYTEST_ARGS)

demo: $(STAMP)
	@$(VENV)/bin/pumplink demo

bench: $(STAMP)
	$(PY) -m bench

# The console's third-party files, copied from the versions locked in pumplink/web/package-lock.json.
# Only this target needs npm; the copies are committed, so running and testing the console do not.
WEB := pumplink/web
VENDOR := $(WEB)/static/vendor
web:
	cd $(WEB) && npm ci --ignore-scripts --no-audit --no-fund
	rm -rf $(VENDOR) && mkdir -p $(VENDOR)
	sed -e '/sourceMappingURL/d' $(WEB)/node_modules/preact/dist/preact.mjs > $(VENDOR)/preact.js
	sed -e '/sourceMappingURL/d' -e 's|from"preact"|from"./preact.js"|' $(WEB)/node_modules/preact/hooks/dist/hooks.mjs > $(VENDOR)/hooks.js
	cp $(WEB)/node_modules/htm/dist/htm.module.js $(VENDOR)/htm.js
	cp $(WEB)/node_modules/uplot/dist/uPlot.esm.js $(VENDOR)/uplot.js
	cp $(WEB)/node_modules/uplot/dist/uPlot.min.css $(VENDOR)/uplot.css
	for p in preact htm uplot; do cp $(WEB)/node_modules/$$p/LICENSE $(VENDOR)/LICENSE.$$p; done
	rm -rf $(WEB)/node_modules

clean:
	rm -rf $(VENV) *.egg-info build dist
