"""ImageNet-style ImageFolder data: the paper tier's classification input.

Layout (the usual ImageNet-1k preparation; ``val/`` re-sorted into class folders)::

    <data.root>/train/<class>/<image>.JPEG
    <data.root>/val/<class>/<image>.JPEG

Transforms are the standard ImageNet ones: random-resized crop (scale 0.08-1) + horizontal
flip for training; resize to ``img_size / crop_pct`` (256 for 224) + ``img_size`` center crop
for evaluation. The paper reports top-1 on ImageNet's validation set, so ``val/`` is both the
validation set seen during training and the test set of the record (``top1``); set
``holdout`` to select on images held out of ``train/`` instead.

Why uint8 batches: the workers decode and crop, and the batch crosses the (pinned) host to
device copy as uint8 -- a quarter of the float32 bytes. The float conversion and the mean/std
normalisation happen on the device in :meth:`on_after_batch_transfer`.

Workers and pinned memory are sized to the machine when left ``null``: one worker per
available core per local training process (minus one for the process itself, at most 16),
pinned memory only when training on CUDA.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from csp_ablate.data.sampling import ResumableTrainOrder, loader_generator
from csp_ablate.errors import ConfigError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LAYOUT = "Expected <root>/train/<class>/<image> and <root>/val/<class>/<image> (ImageNet-1k layout)"


def available_cpus() -> int:
    """Cores this process may run on (the affinity mask: what SLURM/cgroups/taskset allow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_num_workers(local_processes: int = 1, cpus: int | None = None) -> int:
    """Loader workers per training process: the cores left over by the processes, at most 16."""
    cpus = available_cpus() if cpus is None else cpus
    return max(0, min(16, cpus // max(1, local_processes) - 1))


def check_split_dir(root: Path, split: str) -> Path:
    """``root/split`` must exist and hold class folders; the error names the path and the fix."""
    if not root.is_dir():
        raise ConfigError(
            f"ImageFolder data.root={root} does not exist. {_LAYOUT}: point data.root=<dir> at it "
            f"(e.g. `python -m csp_ablate data=imagenet data.root=/data/imagenet`)."
        )
    path = root / split
    if not path.is_dir():
        raise ConfigError(
            f"ImageFolder split directory {path} is missing. {_LAYOUT}. Create it, or point "
            f"data.{split}_dir=<name> at the folder that holds the {split} images."
        )
    if not any(p.is_dir() for p in path.iterdir()):
        hint = (
            " ImageNet's raw val/ is flat: sort it into class folders first (e.g. with the "
            "`valprep.sh` script used by the PyTorch ImageNet example)."
            if any(p.is_file() for p in path.iterdir()) else ""
        )
        raise ConfigError(f"ImageFolder split directory {path} has no class folders. {_LAYOUT}.{hint}")
    return path


def load_split(path: Path):
    """torchvision's ImageFolder over ``path``; empty class folders are a ConfigError."""
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(path), allow_empty=False)
    except FileNotFoundError as err:
        raise ConfigError(
            f"ImageFolder split {path}: {err} Every class folder needs at least one image: remove "
            f"the empty class folders or fill them (train/ and val/ must list the same classes)."
        ) from err


class _Transformed(Dataset):
    """A (path, label) sample list decoded with PIL and transformed to a uint8 CHW tensor."""

    def __init__(self, samples: list[tuple[str, int]], transform) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        from PIL import Image

        # training items come as (index, sample_seed) from EpochBatchSampler: the random crop
        # and flip are drawn from that seed, not from whichever worker decodes the image
        index, sample_seed = item if isinstance(item, tuple) else (item, None)
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except OSError as err:
            raise ConfigError(f"Cannot decode image {path}: {err}. Remove or replace the file.") from err
        if sample_seed is None:
            return self.transform(img), label
        with torch.random.fork_rng(devices=[]):  # torchvision's transforms draw from the global RNG
            torch.manual_seed(sample_seed)
            return self.transform(img), label


def train_transform(img_size: int, scale: tuple[float, float], hflip: float):
    from torchvision.transforms import v2

    return v2.Compose([
        v2.PILToTensor(),
        v2.RandomResizedCrop(img_size, scale=tuple(scale), antialias=True),
        v2.RandomHorizontalFlip(p=hflip),
    ])


def eval_transform(img_size: int, crop_pct: float):
    from torchvision.transforms import v2

    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize(int(round(img_size / crop_pct)), antialias=True),
        v2.CenterCrop(img_size),
    ])


class ImageFolderDataModule(ResumableTrainOrder, L.LightningDataModule):
    """``train/`` and ``val/`` class folders; uint8 batches normalised on the device."""

    def __init__(
        self,
        root: str | None = None,
        train_dir: str = "train",
        val_dir: str = "val",
        img_size: int = 224,
        crop_pct: float = 0.875,
        scale: tuple[float, float] = (0.08, 1.0),
        hflip: float = 0.5,
        channels: int = 3,
        num_classes: int = 1000,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        holdout: int = 0,
        split_seed: int = 0,
        train_subset: int | None = None,
        eval_subset: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        prefetch_factor: int = 4,
    ) -> None:
        super().__init__()
        # checked in setup(), not here: Hydra wraps constructor errors, hiding the clear message
        self.root = Path(root).expanduser() if root else None
        self.train_dir, self.val_dir = train_dir, val_dir
        self.img_size, self.crop_pct, self.scale, self.hflip = img_size, crop_pct, tuple(scale), hflip
        self.channels, self.num_classes = channels, num_classes
        self.holdout, self.split_seed = holdout, split_seed
        self.train_subset, self.eval_subset = train_subset, eval_subset
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pin_memory, self.prefetch_factor = num_workers, pin_memory, prefetch_factor
        # plain tensors (a DataModule is no nn.Module), scaled to uint8 range, moved per batch
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.classes: list[str] = []
        self.train_set = self.val_set = self.test_set = None

    # ---- data -----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.root is None:
            raise ConfigError(
                "data=imagenet needs data.root=<dir>: the directory that holds train/ and val/ "
                f"class folders. {_LAYOUT}."
            )
        if self.channels != 3:
            raise ConfigError.bad_value("data.channels", self.channels, (3,), "ImageFolder images are decoded as RGB.")
        train = load_split(check_split_dir(self.root, self.train_dir))
        val = load_split(check_split_dir(self.root, self.val_dir))
        if train.classes != val.classes:
            only_train = sorted(set(train.classes) - set(val.classes))[:5]
            only_val = sorted(set(val.classes) - set(train.classes))[:5]
            raise ConfigError(
                f"ImageFolder {self.root}: {self.train_dir}/ and {self.val_dir}/ list different classes "
                f"(only in train: {only_train}, only in val: {only_val}). Both need the same class folders."
            )
        if len(train.classes) != self.num_classes:
            raise ConfigError.bad_value(
                "data.num_classes", self.num_classes, (len(train.classes),),
                f"{self.root / self.train_dir} holds {len(train.classes)} class folders.",
            )
        self.classes = list(train.classes)
        train_samples, val_samples = list(train.samples), list(val.samples)
        if self.holdout:
            if not 0 < self.holdout < len(train_samples):
                raise ConfigError.bad_value("data.holdout", self.holdout, f"0..{len(train_samples) - 1}")
            perm = torch.randperm(len(train_samples), generator=torch.Generator().manual_seed(self.split_seed))
            held = [train_samples[i] for i in perm[: self.holdout].tolist()]
            train_samples = [train_samples[i] for i in sorted(perm[self.holdout :].tolist())]
            select_samples = held
        else:
            select_samples = val_samples
        if self.train_subset:
            perm = torch.randperm(len(train_samples), generator=torch.Generator().manual_seed(self.split_seed))
            train_samples = [train_samples[i] for i in sorted(perm[: self.train_subset].tolist())]
        if self.eval_subset:
            select_samples, val_samples = _spread(select_samples, self.eval_subset), _spread(val_samples, self.eval_subset)
        train_tf = train_transform(self.img_size, self.scale, self.hflip)
        eval_tf = eval_transform(self.img_size, self.crop_pct)
        self.train_set = _Transformed(train_samples, train_tf)
        self.val_set = _Transformed(select_samples, eval_tf)
        self.test_set = _Transformed(val_samples, eval_tf)
        log.info(
            "ImageFolder %s: %d classes, %d train, %d val, %d test images",
            self.root, len(self.classes), len(self.train_set), len(self.val_set), len(self.test_set),
        )

    # ---- loaders --------------------------------------------------------------------------
    def _local_processes(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(getattr(trainer, "num_devices", 1) or 1) if trainer is not None else 1

    def _on_cuda(self) -> bool:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return torch.cuda.is_available()
        return trainer.strategy.root_device.type == "cuda"

    def loader_settings(self) -> dict:
        workers = self.num_workers if self.num_workers is not None else auto_num_workers(self._local_processes())
        pin = self.pin_memory if self.pin_memory is not None else self._on_cuda()
        settings = {"num_workers": workers, "pin_memory": pin, "persistent_workers": workers > 0}
        if workers > 0:
            settings["prefetch_factor"] = self.prefetch_factor
        return settings

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        settings = {**self.loader_settings(), "generator": loader_generator(self.train_seed)}
        if train:  # order and augmentation = f(seed, epoch, position), resumable mid-epoch
            return DataLoader(dataset, batch_sampler=self.train_batch_sampler(len(dataset), batch_size, with_seeds=True),
                              **settings)
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, **settings)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, train=False)

    # ---- on the device --------------------------------------------------------------------
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        if x.dtype == torch.uint8:
            mean, std = self._mean.to(x.device), self._std.to(x.device)
            x = x.float().sub_(mean).div_(std)
        return x, y


def _spread(samples: list, n: int) -> list:
    """``n`` samples spread evenly over a class-sorted list, so a subset still covers the classes."""
    if n >= len(samples):
        return samples
    step = len(samples) / n
    return [samples[int(i * step)] for i in range(n)]


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet-1k in the ImageFolder layout (``data=imagenet``; records say dataset=imagenet)."""
