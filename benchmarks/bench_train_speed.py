"""CPU training speed of the proxy model: memory format, torch.compile, threads, CSP fast path.

One training step = forward + backward + SGD step of the default proxy model (CSPPeleeNet
γ=0.5 CSP, batch 128, 32x32, 3 channels). Settings, each checked for the same loss as the
reference before it is timed, each named by what it runs:
- ``naive <fmt>``: the dense layers' two branch 1x1 convs run as two convs (PeleeNet's reference
  code) instead of our single fused conv with 2x the outputs (identical maths and FLOPs);
- ``nchw``, ``channels_last``: the fused model in each memory format, all cores;
- ``compile nchw``, ``compile channels_last`` (torch.compile, inductor; full runs only);
- ``threads=1 <fmt>``. Column ``is_default`` marks the setting ``conf/trainer/cpu.yaml`` runs
  (``channels_last: true``, ``compile: false`` today), read from that file, not assumed.

Same cache state for every setting: ``first_step_s`` is the first training step of a *fresh
process* with an *empty* inductor cache dir (cold: what the first job of a sweep pays), timed the
same way for every setting; for ``compile`` settings it includes the whole compile of the training
graph (the child process runs nothing compiled before the timer: the loss check is the parent's).
Quick runs time it in-process, and column ``first_step_state`` says which. Steady steps are timed
in >= 5 rounds, round-robin in one process, so drift on a shared machine hits all settings alike.

``proxy_job_s_estimate`` = first step + (steps of a proxy job - 1) x the median steady step: the
*training steps only* of a proxy job, an estimate and not a job (it leaves out the per-epoch
validation, data loading and Lightning, which ``Trainer.fit`` = a record's ``train_time_s``
includes). The measured default job is ``bench_job_overhead``'s; the summary therefore compares
compile with the default as a break-even step count (its extra cold start over its per-step
saving), which is what decides whether ``trainer.compile`` pays off for a job of a given length.
It is a lower bound: a job also compiles its validation graphs (batch 512 and the last, smaller
batch), which the first training step does not.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import QUICK, REPO, write_result

BATCH, IMG = 128, 32
PROXY_STEPS = 3 * (55_000 // BATCH)  # tier=proxy: 3 epochs of Fashion-MNIST's 55,000 train images (5,000 held out)


class _NaiveTwoWay:
    """Forward of a 2-way dense layer with its two branch 1x1 convs run separately."""

    @staticmethod
    def split(layer):
        import torch
        from torch import nn

        conv, bn = layer.conv1x1[0], layer.conv1x1[1]
        act = layer.conv1x1[2] if len(layer.conv1x1) > 2 else nn.Identity()
        inter = layer.inter_chs
        branches = []
        for sl in (slice(0, inter), slice(inter, 2 * inter)):
            c = nn.Conv2d(conv.in_channels, inter, 1, bias=False)
            b = nn.BatchNorm2d(inter, eps=bn.eps, momentum=bn.momentum)
            with torch.no_grad():
                c.weight.copy_(conv.weight[sl])
                b.weight.copy_(bn.weight[sl]), b.bias.copy_(bn.bias[sl])
                b.running_mean.copy_(bn.running_mean[sl]), b.running_var.copy_(bn.running_var[sl])
            branches.append(nn.Sequential(c, b, copy.deepcopy(act)))
        layer.naive_a, layer.naive_b = branches
        del layer.conv1x1

        def forward(x, layer=layer):
            return layer.branch1(layer.naive_a(x)), layer.branch2(layer.naive_b(x))

        layer.forward = forward


def naive_copy(model):
    from csp_ablate.models.layers import TwoWayDenseLayer

    naive = copy.deepcopy(model)
    for module in list(naive.modules()):
        if isinstance(module, TwoWayDenseLayer):
            _NaiveTwoWay.split(module)
    return naive


def make_step(model, x, y, channels_last=False):
    import torch
    import torch.nn.functional as F

    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def trainer_defaults() -> dict[str, bool]:
    """``channels_last`` / ``compile`` of the proxy tier's trainer (conf/trainer/cpu.yaml)."""
    import yaml

    cfg = yaml.safe_load((REPO / "conf" / "trainer" / "cpu.yaml").read_text())
    return {"channels_last": bool(cfg.get("channels_last", False)), "compile": bool(cfg.get("compile", False))}


def settings_spec(quick: bool) -> dict[str, dict]:
    """Setting name -> how it is built: naive split, memory format, compile, threads=1."""
    fmt = "channels_last" if trainer_defaults()["channels_last"] else "nchw"
    spec = {
        f"naive {fmt}": {"naive": True, "channels_last": fmt == "channels_last"},
        "nchw": {"channels_last": False},
        "channels_last": {"channels_last": True},
        f"threads=1 {fmt}": {"channels_last": fmt == "channels_last", "threads": 1},
    }
    if not quick:
        spec["compile nchw"] = {"compile": True, "channels_last": False}
        spec["compile channels_last"] = {"compile": True, "channels_last": True}
    return spec


def build(spec: dict, check: bool = True):
    """(step function, loss, reference loss) of one setting, on the fixed seed-0 batch.

    ``check``: compute the setting's eval-mode loss in its own memory format (and compiled, for a
    compile setting) against the plain model's; ``False`` leaves the model untouched so that a
    cold first step pays every compile (the losses are then None)."""
    import torch

    from csp_ablate.models import create_backbone

    torch.manual_seed(0)
    x, y = torch.randn(BATCH, 3, IMG, IMG), torch.randint(0, 10, (BATCH,))
    base = create_backbone("csppeleenet", gamma=0.5, fusion="csp", activation="leaky", num_classes=10)
    model = naive_copy(base) if spec.get("naive") else copy.deepcopy(base)
    channels_last = spec.get("channels_last", False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if spec.get("compile"):
        model = torch.compile(model)
    loss = ref_loss = None
    if check:
        ref_loss = torch.nn.functional.cross_entropy(copy.deepcopy(base).eval()(x), y).item()
        xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        loss = torch.nn.functional.cross_entropy(model.eval()(xin), y).item()
    model.train()
    return make_step(model, x, y, channels_last=channels_last), loss, ref_loss


def cold_first_step(name: str) -> float:
    """The first step of ``name`` in a fresh process with an empty inductor cache dir (seconds)."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": str(Path(cache) / "triton")}
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_train_speed", "--first-step", name],
                             cwd=REPO, env=env, capture_output=True, text=True, check=True, timeout=1800)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["first_step_s"])


def _first_step_child(name: str) -> None:
    import torch

    spec = settings_spec(quick=False)[name]
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    step, _, _ = build(spec, check=False)
    start = time.perf_counter()
    step()
    print(json.dumps({"setting": name, "first_step_s": time.perf_counter() - start}))


def main(argv: list[str] | None = None) -> None:
    import torch

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--first-step"]:
        return _first_step_child(argv[1])
    steps, rounds = (2, 1) if QUICK else (8, 5)
    specs = settings_spec(QUICK)
    defaults = trainer_defaults()
    threads = torch.get_num_threads()
    steps_fn, losses, first_step = {}, {}, {}
    ref_loss = None
    for name, spec in specs.items():
        steps_fn[name], losses[name], ref_loss = build(spec)
        torch.set_num_threads(spec.get("threads", threads))
        start = time.perf_counter()
        steps_fn[name]()  # warm-up (in-process: the compile cache may be warm from another setting)
        first_step[name] = time.perf_counter() - start
    torch.set_num_threads(threads)
    state = "in-process (quick: not a cold start)"
    if not QUICK:
        state = "cold: fresh process, empty inductor cache"
        first_step = {name: cold_first_step(name) for name in specs}
    times: dict[str, list[float]] = {name: [] for name in specs}
    for _ in range(rounds):
        for name, step in steps_fn.items():
            torch.set_num_threads(specs[name].get("threads", threads))
            start = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - start) / steps)
    torch.set_num_threads(threads)
    naive_name = next(n for n in specs if n.startswith("naive"))
    naive_s = statistics.median(times[naive_name])
    default_name = "channels_last" if defaults["channels_last"] else "nchw"
    if defaults["compile"] and not QUICK:
        default_name = f"compile {default_name}"
    rows = []
    for name, t in times.items():
        med = statistics.median(t)
        rows.append({
            "setting": name, "is_default": name == default_name, "step_ms": round(1000 * med, 2),
            "step_ms_min": round(1000 * min(t), 2), "step_ms_max": round(1000 * max(t), 2), "rounds": len(t),
            "img_s": round(BATCH / med, 1), "speedup_vs_naive": round(naive_s / med, 3),
            "same_loss_as_reference": abs(losses[name] - ref_loss) < 1e-3 * max(1.0, abs(ref_loss)),
            "first_step_s": round(first_step[name], 2), "first_step_state": state,
            "proxy_job_s_estimate": round(first_step[name] + (PROXY_STEPS - 1) * med, 1),
            "batch": BATCH, "img_size": IMG, "model": "csppeleenet g0.5 csp",
        })
    write_result("train_speed", rows, summarize(rows, rounds, state))


def summarize(rows: list[dict], rounds: int, state: str) -> str:
    """The default's rate, the fastest correct setting, and compile's break-even against the default."""
    correct = [r for r in rows if r["same_loss_as_reference"]]
    best = max(correct, key=lambda r: r["img_s"])
    default = next(r for r in rows if r["is_default"])
    text = (f"default ({default['setting']}, conf/trainer/cpu.yaml) {default['img_s']:.0f} img/s; fastest correct "
            f"steady state: {best['setting']} ({best['img_s']:.0f} img/s, x{best['speedup_vs_naive']:.2f} vs naive, "
            f"median of {rounds} round(s))")
    for r in rows:
        if r["setting"].startswith("compile") and not r["same_loss_as_reference"]:
            text += f"; {r['setting']}: loss differs from the reference, excluded"
    compiled = [r for r in correct if r["setting"].startswith("compile") and r is not default]
    for r in compiled:
        extra_s = r["first_step_s"] - default["first_step_s"]
        saved_ms = default["step_ms"] - r["step_ms"]
        if saved_ms <= 0:
            text += f"; {r['setting']}: no faster per step than the default, never pays off"
        else:
            steps = max(0.0, 1000 * extra_s / saved_ms)
            text += (f"; {r['setting']}: first step {state} {r['first_step_s']:.1f}s vs {default['first_step_s']:.1f}s, "
                     f"{saved_ms:.1f} ms faster per step, pays off after at least {steps:.0f} steps (a proxy job "
                     f"trains {PROXY_STEPS}; the training graph's compile only: a job also compiles its "
                     f"validation graphs, so this is a lower bound, not a measured job)")
    return text


if __name__ == "__main__":
    main()
