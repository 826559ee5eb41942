"""The CLI end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import json
import math
import sys

import pytest

from conftest import REPO, run_cli

HEAVY = ("torch", "lightning", "timm", "wandb")


@pytest.mark.parametrize("flag", ["--help", "--cfg job"])
def test_startup_commands_do_not_import_heavy_packages(flag):
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['csp_ablate', *{flag.split()!r}]\n"
        "try:\n    runpy.run_module('csp_ablate', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=\n" in proc.stdout, proc.stdout[-500:]
    if flag == "--help":
        model_line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("model: "))
        for name in ("peleenet", "csppeleenet", "speleenet", "peleenext", "cspresnext50", "cspdarknet53"):
            assert name in model_line
        assert "fusion" in proc.stdout
    else:
        assert "gamma: 0.5" in proc.stdout and "fusion: csp" in proc.stdout


def _record(run_dir):
    return json.loads((run_dir / "record.json").read_text())


def test_smoke_run_writes_completed_record(tmp_path, data_override):
    proc = run_cli("tier=smoke", "logger=csv", f"hydra.run.dir={tmp_path}", *data_override)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = _record(tmp_path)
    assert rec["status"] == "completed"
    assert math.isfinite(rec["top1"]) and 0.0 <= rec["top1"] <= 100.0
    assert rec["model"] == "csppeleenet" and rec["gamma"] == 0.5 and rec["fusion"] == "csp"
    assert rec["tier"] == "smoke" and rec["task"] == "classification"
    assert rec["params_m"] > 2.0 and rec["bflops"] > 0.5 and 0 < rec["bflops_train"] < rec["bflops"]
    assert f"record: {tmp_path / 'record.json'}" in proc.stdout
    assert (tmp_path / "csv" / "metrics.csv").exists()


def test_design_card_multirun_runs_the_grid(tmp_path, data_override):
    proc = run_cli(
        "-m", "fusion=first,last", "gamma=0.25,0.5", "tier=smoke", "logger=none",
        f"hydra.sweep.dir={tmp_path}", *data_override,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/record.json"))]
    assert len(records) == 4
    assert {(r["fusion"], r["gamma"]) for r in records} == {
        ("first", 0.25), ("first", 0.5), ("last", 0.25), ("last", 0.5)
    }
    assert all(r["status"] == "completed" and math.isfinite(r["top1"]) for r in records)
    # the four variants really differ: different architectures, different cost
    assert len({r["bflops"] for r in records}) == 4
    assert len({r["config_hash"] for r in records}) == 4


@pytest.mark.parametrize(
    "override, expected",
    [
        ("fusion=middle", ["'fusion'", "'middle'", "none, csp, first, last"]),
        ("gamma=1.5", ["'gamma'", "1.5", "between 0 and 1"]),
        ("gamma=0", ["'gamma'", "between 0 and 1"]),
        ("model=nosuchnet", ["Unknown option 'nosuchnet' for 'model'", "csppeleenet", "peleenet"]),
        ("data.root=/nonexistent/fmnist", ["/nonexistent/fmnist", "apt-get install dataset-fashion-mnist", "data.download=true"]),
        ("activation=gelu", ["'activation'", "leaky, relu, swish, mish"]),
        ("neck=efm", ["neck=efm", "task=detection"]),
    ],
)
def test_bad_input_gives_clear_error_without_traceback(tmp_path, override, expected):
    proc = run_cli(override, "tier=smoke", "logger=none", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2  # a bad input, not a crash
    out = proc.stdout + proc.stderr
    for text in expected:
        assert text in out, out[-2000:]
    assert "Traceback" not in out


def test_axis_that_does_not_apply_is_rejected(tmp_path):
    proc = run_cli("model=peleenet", "gamma=0.5", "tier=smoke", "logger=none", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert "does not apply to model=peleenet" in proc.stderr and "Traceback" not in proc.stderr


def test_wandb_offline_run_holds_summary(tmp_path, data_override):
    from wandb_offline import find_offline_runs, read_offline_run

    proc = run_cli("tier=smoke", "logger=wandb", f"hydra.run.dir={tmp_path}", *data_override,
                   env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = _record(tmp_path)
    (run_dir,) = find_offline_runs(tmp_path)
    run = read_offline_run(run_dir)
    assert run["run_id"] == rec["wandb_run_id"]
    assert run["summary"]["test/top1"] == pytest.approx(rec["top1"], abs=1e-3)
    assert run["summary"]["params_m"] == pytest.approx(rec["params_m"])
    assert run["config"]["model"]["name"] == "csppeleenet"
    assert any("train/loss" in row for row in run["history"])
    assert rec["wandb_dir"] == "wandb/" + run_dir.name  # relative to the record's dir (issue 14)


@pytest.mark.slow
def test_wandb_key_without_network_finishes_offline(tmp_path, data_override):
    """A (fake) API key and no reachable server (loopback discard port): one warning, offline run."""
    from wandb_offline import find_offline_runs

    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "HYDRA_FULL_ERROR")}
    env.update(WANDB_API_KEY="f" * 40, WANDB_BASE_URL="http://127.0.0.1:9", WANDB_SILENT="true")
    proc = subprocess.run([sys.executable, "-m", "csp_ablate", "tier=smoke", "logger=wandb", f"hydra.run.dir={tmp_path}",
                           *data_override], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert out.count("W&B server http://127.0.0.1:9 unreachable") == 1 and "Traceback" not in out
    assert _record(tmp_path)["status"] == "completed" and find_offline_runs(tmp_path)


# ---- backbone=<name> is the alias of model=<name> -------------------------------------------------
@pytest.mark.parametrize(
    "argv, expected",
    [
        (["backbone=peleenet", "tier=smoke"], ["model=peleenet", "tier=smoke"]),
        (["-m", "backbone=peleenet,csppeleenet"], ["-m", "model=peleenet,csppeleenet"]),
        (["backbone=peleenet", "model=peleenet"], ["model=peleenet"]),  # the same choice twice: one
        (["model=peleenet", "lr=1"], ["model=peleenet", "lr=1"]),
    ],
)
def test_backbone_is_read_as_model(argv, expected):
    from csp_ablate.cli import resolve_aliases

    assert resolve_aliases(argv) == expected


@pytest.mark.parametrize("argv", [["backbone=peleenet", "model=csppeleenet"], ["model=csppeleenet", "backbone=peleenet"],
                                  ["backbone=peleenet", "backbone=csppeleenet"]])
def test_backbone_and_model_with_different_values_is_an_error(argv):
    from csp_ablate.cli import resolve_aliases
    from csp_ablate.errors import ConfigError

    with pytest.raises(ConfigError, match="alias of model="):
        resolve_aliases(argv)


def test_backbone_alias_on_the_command_line(tmp_path):
    """End to end: the alias chooses the model group (--cfg job), a conflict exits 2 at once."""
    proc = run_cli("backbone=peleenet", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    assert "name: peleenet" in proc.stdout and "name: csppeleenet" not in proc.stdout
    proc = run_cli("backbone=peleenet", "model=csppeleenet", "logger=none", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "backbone=peleenet and model=csppeleenet" in proc.stderr
    assert "Traceback" not in proc.stderr
