"""Reproducible randomness for exact resume: data order and augmentation as functions of
(seed, epoch, item), and every RNG state that a checkpoint must carry.

Why: a run killed mid-epoch and relaunched must end bit-identical to an uninterrupted run.
Torch's ``RandomSampler`` draws each epoch's permutation from the global generator, which a
relaunch reseeds, so the rest of the epoch saw another shuffle (issue 14: 22.27 % against
22.66 %). Here:

- :class:`EpochBatchSampler` yields the batches of ``randperm(n, seed=f(seed, epoch))``; the
  epoch is read from the trainer's progress when iteration starts, and a resumed run skips the
  batches of that permutation the checkpoint had already consumed (:class:`ResumableTrainOrder`
  saves ``{epoch, batches}`` in the datamodule's checkpoint state, which Lightning restores
  before it builds the train loader).
- Augmenting datasets receive ``(index, sample_seed)`` items and draw their randomness from a
  generator seeded with it (:func:`item_generator`), so augmentation does not depend on which
  worker, or which launch, decodes the image -- ``data.num_workers`` cannot change a result.
- Every loader gets its own ``generator``: a DataLoader without one draws its workers' base
  seed from the *global* generator at each ``iter()``, so an extra or missing ``iter()`` (a
  resume creates its train iterator at another moment) would shift the global stream.
- :func:`rng_state` / :func:`set_rng_state`: python, numpy and torch (CPU, CUDA) generators,
  as plain types that ``torch.load(weights_only=True)`` accepts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, epoch, item) over 63 bits


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch[, item]); distinct tuples give distinct streams."""
    h = 0
    for part in parts:
        h = (h * _MIX + int(part) + 1) % (1 << 63)
    return h


def item_generator(sample_seed: int) -> torch.Generator:
    """The generator an augmenting dataset draws one item's randomness from."""
    return torch.Generator().manual_seed(int(sample_seed))


def loader_generator(seed: int) -> torch.Generator:
    """A DataLoader's own generator, so its ``iter()`` never touches the global RNG."""
    return torch.Generator().manual_seed(mix_seed(seed, 0x10AD))


class EpochBatchSampler(BatchSampler):
    """Batches of a permutation that depends only on (seed, epoch); resumable mid-epoch.

    ``with_seeds`` makes each item ``(index, mix_seed(seed, epoch, position))`` for datasets
    that augment. ``epoch_fn`` (the trainer's epoch counter) wins over :meth:`set_epoch`,
    because Lightning creates the first iterator of a resumed epoch before it sets the epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool = True, with_seeds: bool = False,
                 epoch_fn: Callable[[], int | None] | None = None) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"EpochBatchSampler needs n >= 1 and batch_size >= 1 (got {n}, {batch_size})")
        # BatchSampler.__init__ wants a sampler; ours is the permutation below
        self.sampler, self.n, self.batch_size, self.drop_last = None, n, batch_size, drop_last
        self.seed, self.with_seeds, self.epoch_fn = int(seed), with_seeds, epoch_fn
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, batches: int) -> None:
        """Skip the first ``batches`` batches of ``epoch`` once (a mid-epoch checkpoint)."""
        self._resume = (int(epoch), int(batches))

    def current_epoch(self) -> int:
        found = self.epoch_fn() if self.epoch_fn is not None else None
        return self.epoch if found is None else int(found)

    def order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))

    def __iter__(self) -> Iterator[list]:
        epoch = self.current_epoch()
        skip = 0
        if self._resume is not None and self._resume[0] == epoch:
            skip = self._resume[1]
        self._resume = None
        order = self.order(epoch).tolist()
        for b in range(skip, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.with_seeds:
                start = b * self.batch_size
                yield [(i, mix_seed(self.seed, epoch, start + j)) for j, i in enumerate(idx)]
            else:
                yield idx

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if self.drop_last or not rest else full + 1


class ResumableTrainOrder:
    """Mixin for a LightningDataModule: a seeded, resumable train order saved in checkpoints.

    ``train.run`` calls :meth:`seed_train_order` with the run's seed; the datamodule builds its
    train loader with :meth:`train_batch_sampler`. Lightning saves :meth:`state_dict` in every
    checkpoint and calls :meth:`load_state_dict` on resume, before the train loader exists.
    """

    train_seed: int = 0
    _resume_position: dict[str, int] | None = None

    def seed_train_order(self, seed: int) -> None:
        self.train_seed = int(seed)

    def _trainer_epoch(self) -> int | None:
        trainer = getattr(self, "trainer", None)  # LightningDataModule.trainer, set by Lightning
        fit_loop = getattr(trainer, "fit_loop", None)
        return None if fit_loop is None else int(fit_loop.epoch_progress.current.processed)

    def train_batch_sampler(self, n: int, batch_size: int, drop_last: bool = True,
                            with_seeds: bool = False) -> EpochBatchSampler:
        sampler = EpochBatchSampler(n, batch_size, self.train_seed, drop_last=drop_last,
                                    with_seeds=with_seeds, epoch_fn=self._trainer_epoch)
        if self._resume_position:
            sampler.resume_at(self._resume_position["epoch"], self._resume_position["batches"])
            self._resume_position = None
        return sampler

    def state_dict(self) -> dict[str, Any]:
        """Where the train order stands: the epoch and the batches of it already trained."""
        trainer = getattr(self, "trainer", None)
        fit_loop = getattr(trainer, "fit_loop", None)
        if fit_loop is None:
            return {}
        return {"train_order": {"seed": self.train_seed, "epoch": int(fit_loop.epoch_progress.current.processed),
                                "batches": int(fit_loop.epoch_loop.batch_progress.current.processed)}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        position = (state_dict or {}).get("train_order")
        if position:
            self._resume_position = {"epoch": position["epoch"], "batches": position["batches"]}


# ---- global RNG state ----------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Python, numpy and torch generator states as tensors/lists (weights_only-loadable)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
