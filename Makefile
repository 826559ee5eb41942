# Shortcuts; each target runs the idempotent bootstrap first (see README).
PY := .venv/bin/python

.PHONY: setup run test test-all smoke sweep clean
setup:
	bash scripts/bootstrap.sh
run: setup          ## the main job: CSPPeleeNet on Fashion-MNIST, tier=proxy
	$(PY) -m csp_ablate
smoke: setup        ## seconds: the same code path on a tiny subset
	$(PY) -m csp_ablate tier=smoke
sweep: setup        ## the design card's multirun
	$(PY) -m csp_ablate -m fusion=first,last gamma=0.25,0.5
test: setup         ## fast test suite
	$(PY) -m pytest
test-all: setup     ## including tests marked slow
	$(PY) -m pytest -m "slow or not slow"
clean:
	rm -rf results/runs results/multirun .pytest_cache
