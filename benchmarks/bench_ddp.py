"""DDP overhead on CPU: 2-process DDP (gloo) vs 1 process, same global batch, same cores.

What trainer=ddp costs before any GPU is involved: each rank computes half of every global
batch, then the gradients are averaged with an all-reduce (DistributedDataParallel, the engine
under Lightning's DDPStrategy). Side by side on this machine, all with the same global batch
(per process for ``two_jobs``):

- ``1proc``: one process with every core (torch threads = cores);
- ``ddp2``: two processes with cores // 2 threads each, batch / 2 per rank;
- ``1proc_1thread``: one process, one thread: what each DDP rank has on a 2-core machine;
- ``two_jobs``: two independent 1-thread processes, each training its own model on the full
  batch at the same time: what a local sweep runs (joblib, 2 workers x 1 thread); its
  ``images_per_s`` is the two processes' together. This is the row that says what bounds a proxy
  sweep on this machine.

The DDP figure is against the *better* of the two single-process modes (their medians), with the
cores that mode used: when one process cannot use its second thread well, the better one is the
1-thread process on one core, and DDP on two cores against it is a ratio, not an overhead (the
summary says so instead of printing a negative "overhead"). Modes are interleaved over >= 5
repeats (fresh processes each), the summary gives the median and the min-max of each mode; the
1-minute load average is read once before any measurement (``load_avg_1m_at_start``: others'
load) and before each (``load_avg_1m``: it includes this benchmark's previous processes).

images/s = global batch / median step time (forward, backward, all-reduce, SGD step) after
warm-up (every process starts its first step at a shared barrier); ``allreduce_ms`` times one
all-reduce of a gradient-sized buffer on its own. Synthetic input (random tensors): the input
pipeline is benchmarked separately (bench_imagefolder).

Honest reading for a 2-core machine: two ranks split the same two cores that one process uses,
so DDP cannot be faster than a process that uses both cores well; the figure is the overhead
(gradient all-reduce, a second Python process, smaller per-rank GEMMs), an upper bound on what a
GPU node pays per step, where ranks have a device each and NCCL all-reduces over NVLink. On a
shared machine (others' jobs running), absolute numbers are noisy: compare rows of one run, never
across runs.

OpenMP's wait policy is left as the jobs run it (unset: threads spin a while before they sleep).
An earlier version forced ``OMP_WAIT_POLICY=PASSIVE`` on every mode to protect DDP from spinning
threads; measured that way, on a loaded machine (1-minute load 1.9), the 2-thread process ran
below the 1-thread one (309 vs 545 img/s), which broke the baseline. Set the variable yourself
to measure another policy; it is a column of the CSV.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from benchmarks.common import QUICK, write_result

MODEL, IMG, CLASSES = os.environ.get("BENCH_MODEL", "peleenet"), 32, 10  # the proxy tier's input


def _step_times(rank: int, world: int, batch: int, warmup: int, steps: int, threads: int, port: int, queue,
                independent: bool = False, barrier=None) -> None:
    """Train ``warmup + steps`` steps on this rank; put (rank, step times, all-reduce ms) on ``queue``.
    ``independent``: no process group, each process trains its own model on the full batch.
    ``barrier``: every process waits there before its first step, so that processes whose start-up
    (imports, model build) took different times still train at the same time."""
    import torch.distributed as dist
    import torch.nn.functional as F

    import csp_ablate.models  # noqa: F401  (registers the PeleeNet family in timm)
    from csp_ablate.models import create_backbone

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_backbone(MODEL, num_classes=CLASSES, in_chans=3)
    allreduce_ms = None
    ddp = world > 1 and not independent
    if ddp:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        model = torch.nn.parallel.DistributedDataParallel(model)
        flat = torch.zeros(sum(p.numel() for p in model.parameters()))
        times = []
        for _ in range(5):
            start = time.perf_counter()
            dist.all_reduce(flat)
            times.append(time.perf_counter() - start)
        allreduce_ms = 1000 * statistics.median(times)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    per_rank = batch if independent else batch // world
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(per_rank, 3, IMG, IMG, generator=g)
    y = torch.randint(0, CLASSES, (per_rank,), generator=g)
    model.train()
    if barrier is not None:
        barrier.wait()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    queue.put((rank, times, allreduce_ms))
    if ddp:
        dist.barrier()
        dist.destroy_process_group()


def measure(world: int, threads: int, batch: int, warmup: int, steps: int, independent: bool = False) -> dict:
    """Median step time over ranks and steps for one configuration (fresh processes each).
    ``independent``: ``world`` separate jobs at once; images/s is theirs together."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(world)
    args = (world, batch, warmup, steps, threads, port, queue, independent, barrier)
    procs = [ctx.Process(target=_step_times, args=(r, *args)) for r in range(world)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    if independent:  # separate jobs: each runs at its own pace, the machine's rate is their sum
        step_s = statistics.median(t for r in results for t in r[1])
        images_per_s = sum(batch / statistics.median(r[1]) for r in results)
    else:  # a step ends when the slowest rank ends it: per step, the max over ranks
        step_s = statistics.median(max(r[1][i] for r in results) for i in range(steps))
        images_per_s = batch / step_s
    allreduce = [r[2] for r in results if r[2] is not None]
    return {
        "processes": world, "threads_per_process": threads, "global_batch": batch,
        "per_rank_batch": batch if independent else batch // world,
        "steps_timed": steps, "step_ms": round(1000 * step_s, 1), "images_per_s": round(images_per_s, 1),
        "allreduce_ms": round(statistics.median(allreduce), 2) if allreduce else None,
    }


MODES = (  # (mode, processes, threads per process, independent jobs)
    ("1proc", 1, None, False), ("ddp2", 2, None, False), ("1proc_1thread", 1, 1, False), ("two_jobs", 2, 1, True),
)


def main() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    batches, warmup, steps, repeats = ([64], 2, 5, 1) if QUICK else ([128, 256], 3, 20, 5)  # 128: a proxy job's batch
    policy = os.environ.get("OMP_WAIT_POLICY", "unset (OpenMP default, as jobs run)")
    # the 1-minute load before any measurement: later readings include this benchmark's own processes
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = []
    for batch in batches:
        for rep in range(repeats):  # interleaved, so drift in the machine's load hits every mode
            for mode, world, threads, independent in MODES:
                threads = threads or (cores if world == 1 else max(1, cores // 2))
                load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
                row = measure(world, threads, batch, warmup, steps, independent)
                rows.append({"mode": mode, "repeat": rep, "model": MODEL, "img_size": IMG, "load_avg_1m": load,
                             "load_avg_1m_at_start": load_at_start, "omp_wait_policy": policy,
                             "note": "shared machine: compare rows of one run only", **row})
    summary = [summarize(rows, batch, cores) for batch in batches]
    write_result("ddp_overhead", rows, f"{MODEL} {IMG}px on {cores} cores, CPU gloo, {repeats} interleaved "
                 f"repeat(s): " + "; ".join(summary))


def summarize(rows: list[dict], batch: int, cores: int) -> str:
    """One batch size: DDP against the better single-process mode (both stated, with its cores);
    adds the ratio columns to ``rows``. Overhead = 1 - DDP / best single process (positive: DDP is
    slower), stated as an overhead only when that process had the same cores as DDP."""
    modes = [m for m in ("1proc", "ddp2", "1proc_1thread", "two_jobs")
             if any(r["mode"] == m and r["global_batch"] == batch for r in rows)]
    ips = {m: [r["images_per_s"] for r in rows if r["mode"] == m and r["global_batch"] == batch] for m in modes}
    med = {m: statistics.median(v) for m, v in ips.items()}
    base = max(("1proc", "1proc_1thread"), key=lambda m: med[m])
    base_cores = cores if base == "1proc" else 1
    ratio = med["ddp2"] / med[base]
    for r in rows:
        if r["global_batch"] == batch:
            r.update(baseline_mode=base, baseline_cores=base_cores, ddp_vs_best_1proc=round(ratio, 3),
                     ddp_vs_1proc=round(med["ddp2"] / med["1proc"], 3),
                     ddp_vs_1thread=round(med["ddp2"] / med["1proc_1thread"], 3))

    def fig(m: str) -> str:
        return f"{med[m]:.0f} img/s [{min(ips[m]):.0f}-{max(ips[m]):.0f}]"

    if base_cores == cores:
        verdict = f"{100 * (1 - ratio):+.0f}% overhead against the better single process ({base})"
    else:
        verdict = (f"x{ratio:.2f} of the better single process ({base}, on 1 core while DDP uses {cores}: "
                   f"a ratio, not an overhead; one process does not use its {cores} threads well here)")
    text = (f"batch {batch}: 1 proc x {cores} threads {fig('1proc')}, 1 proc x 1 thread {fig('1proc_1thread')}, "
            f"2-rank DDP x {max(1, cores // 2)} {fig('ddp2')}: {verdict}")
    if "two_jobs" in med:
        text += f"; two independent 1-thread jobs (a local sweep) {fig('two_jobs')} together"
    return text


if __name__ == "__main__":
    main()
