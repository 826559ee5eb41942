"""CPU training speed of the proxy model: memory format, torch.compile, threads, CSP fast path.

One training step = forward + backward + SGD step of the default proxy model (CSPPeleeNet
γ=0.5 CSP, batch 128, 32x32, 3 channels). Settings, each checked for the same loss as the
reference before it is timed:
- ``naive``: the dense layers' two branch 1x1 convs run as two convs (PeleeNet's reference
  code) instead of our single fused conv with 2x the outputs (identical maths and FLOPs);
- ``default``: what the proxy tier runs (fused 1x1, contiguous NCHW, all cores);
- ``channels_last``, ``compile`` (torch.compile, inductor), both, ``threads=1``.
``proxy_job_s`` adds the first step (for ``compile``: the compilation, paid once per job) to
1286 steady steps: the end-to-end cost that decides the proxy default.
The settings are timed round-robin so drift on a shared machine hits all of them alike.
"""

from __future__ import annotations

import copy
import statistics
import time

from benchmarks.common import QUICK, write_result


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


def main() -> None:
    import torch

    from csp_ablate.models import create_backbone

    batch, img = 128, 32
    steps, rounds = (2, 1) if QUICK else (8, 4)
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, img, img), torch.randint(0, 10, (batch,))
    base = create_backbone("csppeleenet", gamma=0.5, fusion="csp", activation="leaky", num_classes=10)
    ref_loss = torch.nn.functional.cross_entropy(copy.deepcopy(base).eval()(x), y).item()
    settings = {
        "naive": (naive_copy(base), {}),
        "default": (copy.deepcopy(base), {}),
        "channels_last": (copy.deepcopy(base), {"channels_last": True}),
        "threads=1": (copy.deepcopy(base), {}),
    }
    if not QUICK:
        settings["compile"] = (torch.compile(copy.deepcopy(base)), {})
        settings["compile+channels_last"] = (torch.compile(copy.deepcopy(base)), {"channels_last": True})
    threads = torch.get_num_threads()
    steps_fn, losses, first_step = {}, {}, {}
    for name, (model, opts) in settings.items():
        losses[name] = torch.nn.functional.cross_entropy(model.eval()(x), y).item()
        model.train()
        steps_fn[name] = make_step(model, x, y, **opts)
        start = time.perf_counter()
        steps_fn[name]()  # warm-up: for torch.compile this is the compilation, paid once per job
        first_step[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(rounds):
        for name, step in steps_fn.items():
            torch.set_num_threads(1 if name == "threads=1" else threads)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - start) / steps)
    torch.set_num_threads(threads)
    naive_s = statistics.median(times["naive"])
    rows = [{
        "setting": name, "step_ms": round(1000 * statistics.median(t), 2),
        "img_s": round(batch / statistics.median(t), 1), "speedup_vs_naive": round(naive_s / statistics.median(t), 3),
        "same_loss_as_reference": abs(losses[name] - ref_loss) < 1e-3 * max(1.0, abs(ref_loss)),
        "first_step_s": round(first_step[name], 2),
        # a proxy job trains 1287 steps: what the setting saves there, net of its first step
        "proxy_job_s": round(first_step[name] + 1286 * statistics.median(t), 1),
        "batch": batch, "img_size": img, "model": "csppeleenet g0.5 csp",
    } for name, t in times.items()]
    correct = [r for r in rows if r["same_loss_as_reference"]]
    best = max(correct, key=lambda r: r["img_s"])
    best_job = min(correct, key=lambda r: r["proxy_job_s"])
    write_result("train_speed", rows,
                 f"fastest correct steady state: {best['setting']} ({best['img_s']:.0f} img/s, "
                 f"x{best['speedup_vs_naive']:.2f} vs naive); fastest proxy job incl. warm-up/compile: "
                 f"{best_job['setting']} ({best_job['proxy_job_s']:.0f} s of training)")


if __name__ == "__main__":
    main()
