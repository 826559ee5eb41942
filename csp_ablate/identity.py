"""One identity for a run: which config keys can change a result, and the hashes built on that.

A sweep skips a grid point whose ``config_hash`` and ``seed`` already have a completed record,
the report pools records by that identity, and a relaunch resumes a checkpoint only when its
fingerprint matches. All three must agree on what "the same experiment" is, so there is ONE
table here (:data:`NON_RESULT`) of the keys that cannot change a result, and one explicit list
(:data:`RESULT`) of those that can. ``tests/test_identity.py`` walks every leaf of the composed
config (each task, tier, data set, trainer, logger and sweep) and fails on a leaf that is in
neither list, so a new key cannot slip into the identity (or out of it) unclassified.

- :func:`config_hash`: the result-changing keys, resolved, *without* ``seed`` (a grid point).
- :func:`fingerprint`: the same keys *with* ``seed`` (one run; what a checkpoint belongs to).

"Cannot change a result" means bit-identical weights and metrics on the same machine, which
is what exact resume guarantees. Numerics therefore count: precision, accelerator, devices,
``deterministic``/``benchmark``, ``channels_last``, ``compile`` and the *resolved* CPU thread
count (measured: threads=1 and threads=2 give different top-1 on the same seed, see README
"Sweeps") are result-changing. ``threads=null`` is resolved before hashing
(:func:`csp_ablate.threads.resolve_threads`), so a sweep that must be resumable on another
machine or with another ``n_jobs`` fixes ``threads=N`` on its command line or in its yaml.

This module imports no torch: the launcher hashes every grid point before deciding to train it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: Keys that cannot change a run's weights or metrics: where files go, where data are read
#: from, how it is logged, shown, checkpointed, timed and scheduled by a sweep. Glob patterns
#: over dotted paths; ``x.*`` is a whole subtree.
NON_RESULT: tuple[str, ...] = (
    # paths and job control (force/report steer a sweep; sweep is the name of the W&B group)
    "output_dir", "sweep", "force", "report.*", "hydra.*",
    "data.root", "data.cache_dir", "data.download",
    # data-loading throughput: the order and augmentation are functions of (seed, epoch, item)
    # (csp_ablate.data.sampling), not of the workers that compute them
    "data.num_workers", "data.pin_memory", "data.prefetch_factor", "data.cache_images",
    # logging, progress and checkpoint cadence (exact resume: a relaunch ends bit-identical)
    "logger.*", "progress_refresh_rate", "checkpoint.*",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.enable_checkpointing",
    "trainer.log_every_n_steps",
    # Lightning's own sampler is always replaced (train.py passes use_distributed_sampler=False)
    "trainer.use_distributed_sampler",
    # the fps measurement runs after training, on a copy of the trained model
    "profile.fps",
)

#: Keys that can change a result. Every leaf of the composed config must match this list or
#: :data:`NON_RESULT` (tests/test_identity.py); a key matching neither is a test failure.
RESULT: tuple[str, ...] = (
    # the paper's axes and the run's seed (the seed is in the fingerprint, not the config hash)
    "seed", "tier", "gamma", "fusion", "activation", "neck", "extras",
    # what is trained, on what, how (every key of these groups shapes the model or the data)
    "model.*", "task.*", "detector.*", "paper_schedule.*",
    "data._target_", "data.img_size", "data.resize", "data.channels", "data.num_classes",
    "data.val_size", "data.split_seed", "data.train_subset", "data.eval_subset", "data.batch_size",
    "data.eval_batch_size",  # eval convolutions may pick another kernel per batch size
    "data.train_dir", "data.val_dir", "data.crop_pct", "data.scale", "data.hflip", "data.holdout",
    "data.train_images", "data.train_annotations", "data.val_images", "data.val_annotations",
    "data.seed", "data.n_train", "data.n_val", "data.canvas", "data.bands", "data.min_items",
    "data.max_items",
    # schedule, evaluation and numerics
    "trainer._target_", "trainer.max_epochs", "trainer.max_steps", "trainer.limit_train_batches",
    "trainer.limit_val_batches", "trainer.limit_test_batches", "trainer.val_check_interval",
    "trainer.check_val_every_n_epoch", "trainer.num_sanity_val_steps",
    "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
    "trainer.precision", "trainer.deterministic", "trainer.benchmark", "trainer.sync_batchnorm",
    "trainer.channels_last", "trainer.compile",
    # cost columns of the record are counted at this input
    "profile.paper_img_size", "profile.paper_num_classes",
    # extra Lightning callbacks (conf/callbacks/): one can stop a run early or average its weights;
    # an empty group is left out of the tree (:func:`result_config`), so runs without any keep the
    # hashes they had before the group existed
    "callbacks.*",
    # CPU threads change the reduction order of convolutions (resolved before hashing)
    "threads",
)


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) or (p.endswith(".*") and key == p[:-2]) for p in patterns)


def classify(key: str) -> str | None:
    """``"result"``, ``"non_result"`` or None (unclassified: a test fails) for a dotted key."""
    non, res = _matches(key, NON_RESULT), _matches(key, RESULT)
    if non and res:
        raise ValueError(f"config key {key} is classified both as result-changing and as not")
    return "non_result" if non else "result" if res else None


def leaves(tree: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every leaf of a nested dict (lists and empty dicts are leaves)."""
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix


def _drop(tree: dict[str, Any], prefix: str = "") -> None:
    for key in list(tree):
        path = f"{prefix}.{key}" if prefix else str(key)
        if _matches(path, NON_RESULT):
            del tree[key]
        elif isinstance(tree[key], dict):
            _drop(tree[key], path)


def result_config(cfg: DictConfig, with_seed: bool) -> dict[str, Any]:
    """The resolved result-changing part of ``cfg`` (``threads`` resolved to the count used)."""
    from csp_ablate.threads import resolve_threads

    tree = OmegaConf.to_container(cfg, resolve=False)
    _drop(tree)
    if not tree.get("callbacks"):  # no extra callback: the identity of every run made before the group
        tree.pop("callbacks", None)
    if not with_seed:
        tree.pop("seed", None)
    # resolve what is left (top-level axes interpolated into model.*) without Hydra's resolvers
    resolved = OmegaConf.to_container(OmegaConf.create(tree), resolve=True)
    resolved["threads"] = resolve_threads(cfg)
    return resolved


def _digest(tree: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:12]


def config_hash(cfg: DictConfig) -> str:
    """Identity of a grid point: the result-changing keys without seed. Equal hash + seed,
    equal result (sweep skip, report pooling, the record's ``config_hash``)."""
    return _digest(result_config(cfg, with_seed=False))


def fingerprint(cfg: DictConfig) -> str:
    """Identity of one run (with seed): a checkpoint is resumed only by the run it belongs to."""
    return _digest(result_config(cfg, with_seed=True))
