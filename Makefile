# Shortcuts; each target runs the idempotent bootstrap first (see README).
PY := .venv/bin/python

.PHONY: setup run test test-all smoke sweep sweep-table1 sweep-figure4 sweep-table2 figure7 transform report bench clean
setup:
	bash scripts/bootstrap.sh
run: setup          ## the main job: CSPPeleeNet on Fashion-MNIST, tier=proxy
	$(PY) -m csp_ablate
smoke: setup        ## seconds: the same code path on a tiny subset
	$(PY) -m csp_ablate tier=smoke
sweep: setup        ## the design card's multirun
	$(PY) -m csp_ablate -m fusion=first,last gamma=0.25,0.5
sweep-table1: setup ## Table 1 proxy sweep -> results/proxy/table1 (rerun resumes)
	$(PY) -m csp_ablate -m sweep=table1
sweep-figure4: setup ## Figure 4 proxy sweep -> results/proxy/figure4
	$(PY) -m csp_ablate -m sweep=figure4
sweep-table2: setup ## Table 2 proxy sweep (detection) -> results/proxy/table2 (rerun resumes)
	$(PY) -m csp_ablate -m sweep=table2
figure7: setup      ## per-layer cost of the detectors (paper Figure 7) -> results/fidelity/detection
	$(PY) -m csp_ablate.profile figure7=detection
transform: setup    ## the CSP transform on timm bases vs timm's cspdarknet53 -> results/fidelity/transform
	$(PY) -m csp_ablate.profile transform=true
report: setup       ## rebuild a sweep's tables from its records: make report DIR=results/proxy/table1
	$(PY) -m csp_ablate.report $(DIR)
test: setup         ## fast test suite
	$(PY) -m pytest
test-all: setup     ## including tests marked slow
	$(PY) -m pytest -m "slow or not slow"
BENCHES := bench_startup bench_report bench_data bench_overhead bench_train_speed bench_inference bench_job_overhead bench_ddp bench_imagefolder
bench: setup        ## benchmarks -> results/bench/*.csv + summary.md (BENCH_QUICK=1: tiny, results/bench/quick/)
	@for b in $(BENCHES); do echo "== $$b"; $(PY) -m benchmarks.$$b || exit 1; done
clean:
	rm -rf results/runs results/multirun .pytest_cache
