"""One identity (issue 14): every config key is classified as result-changing or not, the
config hash and the checkpoint fingerprint derive from that one table, and a finished sweep
rerun with a key that cannot change a result (data.num_workers) skips every job."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF_DIR, run_cli
from csp_ablate.identity import NON_RESULT, RESULT, classify, config_hash, fingerprint, leaves

TASKS = {"classification": ("task=classification",), "detection": ("task=detection", "data=fashion_det")}
TIERS = ("smoke", "proxy", "paper")


def _group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _compositions() -> list[tuple[str, ...]]:
    """Each task x tier, then every option of every other config group once."""
    combos = [(*TASKS[t], f"tier={tier}") for t, tier in itertools.product(TASKS, TIERS)]
    for group in ("data", "trainer", "logger", "model", "sweep", "neck", "callbacks"):
        for option in _group_options(group):
            combos.append((*(TASKS["detection"] if group == "neck" else ()), f"{group}={option}"))
    for option in _group_options("variant"):  # a variant is a row of a named sweep
        combos.append(("sweep=table2" if option.startswith("t2_") else "sweep=table1", f"variant={option}"))
    return combos


def test_every_config_leaf_is_classified(compose):
    """A new key in conf/ must be added to identity.RESULT or identity.NON_RESULT."""
    unclassified: dict[str, tuple[str, ...]] = {}
    seen = 0
    for overrides in _compositions():
        cfg = compose(*overrides)
        for key in leaves(OmegaConf.to_container(cfg, resolve=False)):
            seen += 1
            if classify(key) is None:
                unclassified.setdefault(key, overrides)
    assert seen > 100
    assert not unclassified, (
        "config keys in neither identity.RESULT nor identity.NON_RESULT (say whether each can change "
        f"a result): {unclassified}"
    )


def test_classification_is_disjoint_and_catches_a_new_key():
    assert classify("data.num_workers") == "non_result" and classify("model.gamma") == "result"
    assert classify("data.some_new_knob") is None  # would fail the walk above
    overlap = [p for p in NON_RESULT if p in RESULT]
    assert not overlap


@pytest.mark.parametrize("override", [
    "data.num_workers=1", "data.root=/elsewhere", "profile.fps=false", "logger=csv", "output_dir=/x",
    "checkpoint.every_n_train_steps=4", "progress_refresh_rate=1", "trainer.log_every_n_steps=3",
    "trainer.enable_progress_bar=false",
])
def test_keys_that_cannot_change_a_result_keep_the_identity(compose, override):
    base = compose("threads=1")
    other = compose("threads=1", override)
    assert config_hash(other) == config_hash(base)
    assert fingerprint(other) == fingerprint(base)  # the checkpoint of the same run resumes


@pytest.mark.parametrize("override", [
    "gamma=0.25", "model=peleenet", "data.batch_size=64", "trainer.max_epochs=2", "threads=2",
    "trainer.precision=bf16-mixed", "data.train_subset=100", "callbacks=early_stopping",
    "+callbacks.swa._target_=lightning.pytorch.callbacks.StochasticWeightAveraging",
])
def test_result_changing_keys_change_the_identity(compose, override):
    base = compose("threads=1")
    assert config_hash(compose("threads=1", override)) != config_hash(base)


def test_seed_is_in_the_fingerprint_not_the_config_hash(compose):
    a, b = compose("threads=1", "seed=0"), compose("threads=1", "seed=1")
    assert config_hash(a) == config_hash(b) and fingerprint(a) != fingerprint(b)


def test_null_threads_are_resolved_into_the_identity(compose, monkeypatch):
    """threads=null means the cores shared by the parallel jobs: hashed as the count it becomes."""
    from csp_ablate import threads

    monkeypatch.setattr(threads, "available_cpus", lambda: 4)
    assert config_hash(compose()) == config_hash(compose("threads=4"))
    monkeypatch.setattr(threads, "parallel_jobs", lambda: 2)
    assert config_hash(compose()) == config_hash(compose("threads=2"))


def test_changing_num_workers_on_a_finished_sweep_skips_every_job(tmp_path, data_override):
    sweep_dir = tmp_path / "sweep"
    common = ("-m", "seed=0,1", "tier=smoke", "logger=none", "threads=1", "trainer.limit_train_batches=2",
              f"hydra.sweep.dir={sweep_dir}", *data_override)
    first = run_cli(*common)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p: p.read_text() for p in sorted(Path(sweep_dir).glob("*/record.json"))}
    assert len(before) == 2 and all(json.loads(t)["status"] == "completed" for t in before.values())
    again = run_cli(*common, "data.num_workers=1")
    assert again.returncode == 0, again.stderr[-3000:]
    lines = again.stdout.splitlines()
    assert sum(line.startswith("[csp_ablate] skipped:") for line in lines) == 2
    assert not any(line.startswith("[csp_ablate] completed:") for line in lines)
    assert {p: p.read_text() for p in before} == before  # nothing retrained or rewritten
