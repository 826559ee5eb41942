"""Shared fixtures: a tiny Fashion-MNIST-format data set and a CLI runner."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SYSTEM_FMNIST = Path("/usr/share/datasets/fashion-mnist")
#: Table 1's 39 proxy records of 2026-11-24, frozen for the planner/verdict tests (see its README.md)
TABLE1_N3 = REPO / "tests" / "data" / "table1_proxy_n3"


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write ``array`` (uint8) in the idx format used by (Fashion-)MNIST."""
    ndim = array.ndim
    header = (0x0800 | ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)
    return path


def make_fmnist_like(root: Path, n_train: int = 1200, n_test: int = 300, seed: int = 0) -> Path:
    """A learnable 10-class set in Fashion-MNIST's file layout: class k is a bright band at row 2k+3."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 * k + 3 : 2 * k + 6, 4:24] = 230
        write_idx(root / f"{split}-images-idx3-ubyte", images)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels)
    return root


#: where a run lands when a test forgets ``hydra.run.dir`` / ``hydra.sweep.dir`` (or W&B's ``dir``)
CLONE_OUTPUTS = ("results/runs", "results/multirun", "results/smoke", "outputs", "multirun", "wandb",
                 "lightning_logs")


def _entries(paths: list[Path]) -> set[Path]:
    return {entry for path in paths if path.is_dir() for entry in path.iterdir()}


@pytest.fixture(scope="session", autouse=True)
def clone_outputs_untouched():
    """Every test writes its runs under its own ``tmp_path``: a user who runs the tests keeps a clean
    ``results/runs`` (three error tests once left failed records there), and each test's files go
    when it passes (``tmp_path_retention_policy = "failed"``) instead of filling the disk."""
    watched = [REPO / rel for rel in CLONE_OUTPUTS]
    before = _entries(watched)
    yield
    added = sorted(str(entry.relative_to(REPO)) for entry in _entries(watched) - before)
    assert not added, f"tests wrote into the clone: {added}; give the run hydra.run.dir=<tmp_path>"


@pytest.fixture(scope="session")
def tiny_fmnist(tmp_path_factory) -> Path:
    return make_fmnist_like(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="session")
def data_override(tiny_fmnist) -> list[str]:
    """Use the embedded Debian copy when installed (as in CI), else the generated tiny set."""
    if (SYSTEM_FMNIST / "train-images-idx3-ubyte.gz").exists():
        return []
    return [f"data.root={tiny_fmnist}", "data.val_size=200"]


def run_cli(*args: str, module: str = "csp_ablate", env: dict | None = None, timeout: int = 600):
    """Run ``python -m <module> args...`` in a subprocess from the repo root."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    full_env.pop("HYDRA_FULL_ERROR")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )


@pytest.fixture
def compose():
    """Compose the project config in-process (no subprocess), like the CLI would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))

    yield _compose
    GlobalHydra.instance().clear()
