"""Fashion-MNIST as in-memory tensors: the embedded default data of the proxy tier.

Why in memory: the whole set is 70k 28x28 uint8 images (55 MB). Holding it as one tensor and
slicing whole batches (``BatchSampler`` + ``batch_size=None``) costs microseconds per batch,
so a 2-core CPU spends its time in the model, not in per-item PIL/collate work.

The idx files come from ``data.root`` or the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``); ``.gz`` or uncompressed. ``data.download=true``
fetches them (through torchvision's mirrors) only when asked.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from csp_ablate.data.sampling import ResumableTrainOrder, loader_generator
from csp_ablate.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST train-set statistics
_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # images (3 dims), labels (1 dim), unsigned bytes
_FIX = (
    "Install the embedded copy with `apt-get install dataset-fashion-mnist`, point "
    "data.root=<dir with the 4 idx files>, or add data.download=true (needs network)."
)


def _find(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file (optionally gzipped) into a uint8 array, validating its header."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise ConfigError(f"Corrupt Fashion-MNIST file {path}: {err}. {_FIX}") from err
    if len(raw) < 8:
        raise ConfigError(f"Corrupt Fashion-MNIST file {path}: only {len(raw)} bytes. {_FIX}")
    magic = int.from_bytes(raw[:4], "big")
    ndim = magic & 0xFF
    if ndim not in _IDX_MAGIC or magic != _IDX_MAGIC[ndim]:
        raise ConfigError(f"Corrupt Fashion-MNIST file {path}: bad idx magic number {magic:#010x}. {_FIX}")
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise ConfigError(
            f"Corrupt Fashion-MNIST file {path}: header says {dims} ({expected} bytes) but the file "
            f"holds {len(raw) - header} bytes (truncated download?). {_FIX}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(root: Path) -> dict[str, np.ndarray]:
    """Read the four idx files from ``root``; clear errors name the path and the fix."""
    missing = [stem for stem in FILES.values() if _find(root, stem) is None]
    if missing:
        raise ConfigError(
            f"Fashion-MNIST not found in data.root={root} (missing {', '.join(m + '[.gz]' for m in missing)}). {_FIX}"
        )
    arrays = {key: read_idx(_find(root, stem)) for key, stem in FILES.items()}
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise ConfigError(f"Fashion-MNIST {split} split in {root}: {n_img} images but {n_lab} labels. {_FIX}")
        if arrays[f"{split}_labels"].max(initial=0) >= len(CLASSES):
            raise ConfigError(f"Fashion-MNIST {split} labels in {root} exceed 9: not Fashion-MNIST? {_FIX}")
    return arrays


def download_fashion_mnist(root: Path) -> None:
    """Fetch the idx files into ``root`` (only on request: ``data.download=true``)."""
    from torchvision.datasets import FashionMNIST

    log.info("Downloading Fashion-MNIST into %s", root)
    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as err:  # network errors come in many types
        raise ConfigError(f"Could not download Fashion-MNIST into {root}: {err}. {_FIX}") from err


class TensorBatches(Dataset):
    """Whole batches sliced out of uint8 image tensors; indexing takes a list of indices."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, img_size: int, channels: int):
        self.images, self.labels = images, labels
        self.img_size, self.channels = img_size, channels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index].unsqueeze(1).float().mul_(1.0 / 255.0)
        if x.shape[-1] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        x = x.sub_(MEAN).div_(STD)
        if self.channels != 1:
            x = x.expand(-1, self.channels, -1, -1).contiguous()
        return x, self.labels[index]


class FashionMNISTDataModule(ResumableTrainOrder, L.LightningDataModule):
    """Fashion-MNIST with a fixed seeded train/val split and the official 10k test set."""

    def __init__(
        self,
        root: str | None = None,
        download: bool = False,
        img_size: int = 32,
        resize: str = "pad",
        channels: int = 3,
        num_classes: int = 10,
        val_size: int = 5000,
        split_seed: int = 0,
        train_subset: int | None = None,
        eval_subset: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if resize not in ("pad", "bilinear"):
            raise ConfigError.bad_value("data.resize", resize, ("pad", "bilinear"))
        if channels not in (1, 3):
            raise ConfigError.bad_value("data.channels", channels, (1, 3))
        if num_classes != len(CLASSES):
            raise ConfigError.bad_value("data.num_classes", num_classes, (len(CLASSES),))
        self.root = Path(root) if root else DEFAULT_ROOT
        self.download, self.img_size, self.resize, self.channels = download, img_size, resize, channels
        self.num_classes, self.val_size, self.split_seed = num_classes, val_size, split_seed
        self.train_subset, self.eval_subset = train_subset, eval_subset
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.train_set = self.val_set = self.test_set = None

    def prepare_data(self) -> None:
        if self.download and any(_find(self.root, s) is None for s in FILES.values()):
            download_fashion_mnist(self.root)

    def _locate(self) -> Path:
        """Where the idx files are: root itself, or torchvision's download layout below it."""
        for cand in (self.root, self.root / "FashionMNIST" / "raw"):
            if all(_find(cand, s) is not None for s in FILES.values()):
                return cand
        return self.root

    def _prepare_images(self, images: np.ndarray) -> torch.Tensor:
        """Pad once at load time (cheap uint8), so batches only need a float conversion."""
        t = torch.from_numpy(images.copy())
        if self.resize == "pad" and self.img_size >= t.shape[-1]:
            total = self.img_size - t.shape[-1]
            t = F.pad(t, (total // 2, total - total // 2, total // 2, total - total // 2))
        return t

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        arrays = load_fashion_mnist(self._locate())
        images = self._prepare_images(arrays["train_images"])
        labels = torch.from_numpy(arrays["train_labels"].astype(np.int64))
        if not 0 < self.val_size < len(labels):
            raise ConfigError.bad_value("data.val_size", self.val_size, f"1..{len(labels) - 1}")
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = perm[: self.val_size], perm[self.val_size :]
        if self.train_subset:
            train_idx = train_idx[: self.train_subset]
        if self.eval_subset:
            val_idx = val_idx[: self.eval_subset]
        test_images = self._prepare_images(arrays["test_images"])
        test_labels = torch.from_numpy(arrays["test_labels"].astype(np.int64))
        if self.eval_subset:
            test_images, test_labels = test_images[: self.eval_subset], test_labels[: self.eval_subset]
        make = lambda x, y: TensorBatches(x, y, self.img_size, self.channels)  # noqa: E731
        self.train_set = make(images[train_idx], labels[train_idx])
        self.val_set = make(images[val_idx], labels[val_idx])
        self.test_set = make(test_images, test_labels)

    def _loader(self, dataset: TensorBatches, batch_size: int, shuffle: bool) -> DataLoader:
        # training order: a function of (seed, epoch), resumable mid-epoch (data/sampling.py)
        sampler = (self.train_batch_sampler(len(dataset), batch_size) if shuffle
                   else BatchSampler(SequentialSampler(dataset), batch_size=batch_size, drop_last=False))
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=loader_generator(self.train_seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)
