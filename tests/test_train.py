"""Training in-process: LR schedule, determinism under a seed, learning on a learnable set."""

from __future__ import annotations

import lightning as L
import pytest

from csp_ablate.errors import ConfigError
from csp_ablate.identity import config_hash
from csp_ablate.tasks.optim import lr_factor, poly_lr_factor
from csp_ablate.validate import validate_config


def test_poly_lr_schedule():
    assert poly_lr_factor(0, 100, 4.0) == 1.0
    assert poly_lr_factor(50, 100, 4.0) == pytest.approx(0.5**4)
    assert poly_lr_factor(100, 100, 4.0) == 0.0
    assert poly_lr_factor(0, 100, 1.0, warmup_steps=10) == pytest.approx(0.1)
    assert poly_lr_factor(9, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)


def test_step_decay_schedule_is_the_shared_one():
    """Detection's step decay (darknet's ``steps``) lives in the same module as the poly decay."""
    assert lr_factor(0, 1000, warmup_steps=10, milestones=[400, 450]) == pytest.approx(0.1)
    assert lr_factor(399, 1000, milestones=[400, 450], decay=0.1) == 1.0
    assert lr_factor(400, 1000, milestones=[400, 450], decay=0.1) == pytest.approx(0.1)
    assert lr_factor(450, 1000, milestones=[400, 450], decay=0.5) == pytest.approx(0.25)
    assert lr_factor(500, 1000, poly_power=1.0) == pytest.approx(0.5)  # no milestones: poly


def test_each_task_has_one_factory_module():
    """train.run looks the task up by name; an unknown task is a ConfigError naming the choices."""
    from csp_ablate.tasks import TASKS, task_spec

    for name in TASKS:
        spec = task_spec(name)
        assert all(callable(getattr(spec, f)) for f in ("build", "evaluate", "inference")), name
    with pytest.raises(ConfigError, match="classification"):
        task_spec("segmentation")


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["fusion=middle"], "fusion"),
        (["gamma=1.5"], "gamma"),
        (["gamma=-0.1"], "gamma"),
        (["gamma=abc"], "gamma"),
        (["model=peleenet", "fusion=last"], "does not apply to model=peleenet"),
        (["extras=[giou]"], "task=detection"),
        (["seed=1.5"], "seed"),
    ],
)
def test_validate_rejects_bad_axes(compose, overrides, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(compose(*overrides))


@pytest.mark.parametrize("overrides", [[], ["model=peleenet"], ["fusion=none"], ["gamma=0.75", "fusion=first"]])
def test_validate_accepts_good_configs(compose, overrides):
    validate_config(compose(*overrides))


def _tiny_run(compose, tiny_fmnist, out, *extra):
    from csp_ablate.train import run

    cfg = compose(
        "tier=smoke", "logger=none", f"output_dir={out}", f"data.root={tiny_fmnist}", "data.val_size=200",
        "data.train_subset=null", "data.eval_subset=null", *extra,
    )
    validate_config(cfg)
    return run(cfg)


def test_same_seed_same_result(compose, tiny_fmnist, tmp_path):
    a = _tiny_run(compose, tiny_fmnist, tmp_path / "a", "model=peleenet")
    b = _tiny_run(compose, tiny_fmnist, tmp_path / "b", "model=peleenet")
    assert a["top1"] == b["top1"] and a["val_top1"] == b["val_top1"]
    assert a["config_hash"] == b["config_hash"]


def test_training_learns_a_learnable_set(compose, tiny_fmnist, tmp_path):
    """The band-position set is trivially separable: a few epochs must beat chance (10%) by far."""
    rec = _tiny_run(compose, tiny_fmnist, tmp_path, "model=peleenet", "trainer.max_epochs=4", "task.lr=0.05")
    assert rec["status"] == "completed"
    assert rec["top1"] > 60.0, rec


class StepProbe(L.Callback):
    """An extra callback a test names by ``_target_``: it notes each training step it sees."""

    seen: list[str] = []

    def __init__(self, tag: str = "probe") -> None:
        self.tag = tag

    def on_train_batch_end(self, *args, **kwargs) -> None:
        StepProbe.seen.append(self.tag)


def test_extra_callbacks_from_the_command_line_run_in_the_job(compose, tiny_fmnist, tmp_path):
    """``+callbacks.<name>._target_=...`` (conf/callbacks/) adds a Lightning callback to the job;
    it is part of the run's identity, and a run without one keeps the hash it had."""
    StepProbe.seen.clear()
    probe = ("+callbacks.probe._target_=test_train.StepProbe", "+callbacks.probe.tag=x")
    with_probe = _tiny_run(compose, tiny_fmnist, tmp_path / "a", "model=peleenet", "trainer.max_steps=3", *probe)
    assert with_probe["status"] == "completed" and with_probe["steps"] == 3
    assert StepProbe.seen == ["x"] * 3
    plain = compose("tier=smoke", "model=peleenet", "trainer.max_steps=3", f"data.root={tiny_fmnist}")
    assert with_probe["config_hash"] != config_hash(plain)


def test_a_callback_without_target_or_of_the_wrong_class_is_one_clear_error(compose):
    from csp_ablate.train import build_extra_callbacks

    with pytest.raises(ConfigError, match=r"callbacks.es has no _target_: .*\+callbacks.es._target_="):
        validate_config(compose("+callbacks.es.monitor=val/top1"))
    with pytest.raises(ConfigError, match=r"Invalid value for 'callbacks.d._target_': 'collections.OrderedDict'"):
        build_extra_callbacks(compose("+callbacks.d._target_=collections.OrderedDict"))
    with pytest.raises(ConfigError, match=r"callbacks.x: cannot instantiate 'no_such.Callback'"):
        build_extra_callbacks(compose("+callbacks.x._target_=no_such.Callback"))
    from lightning.pytorch.callbacks import EarlyStopping

    (early,) = build_extra_callbacks(compose("callbacks=early_stopping"))
    assert isinstance(early, EarlyStopping) and early.monitor == "val/top1" and early.patience == 3
    assert build_extra_callbacks(compose()) == []


def test_summary_line_tolerates_missing_metrics():
    """A run without validation (trainer.limit_val_batches=0) still prints its summary line."""
    from csp_ablate.record import RECORD_KEYS
    from csp_ablate.record import summary_line

    rec = dict.fromkeys(RECORD_KEYS) | {"status": "completed", "model": "peleenet", "top1": 88.5,
                                         "params_m": 2.8, "bflops": 1.016, "train_time_s": 12.0}
    line = summary_line(rec, "/tmp/record.json")
    assert "top1=88.50%" in line and "val_top1=n/a%" in line and "record: /tmp/record.json" in line
