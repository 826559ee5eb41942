"""fps of every row of a finished sweep, measured quietly in one pass: ``<sweep dir>/fps.csv``.

``python -m csp_ablate.profile sweep_dir=<dir>``. The fps a job records is measured inside a busy
sweep (the other job, CI, ...) and is noise between rows (Table 2's EFM seed 1: 9.4 fps against
~20 for the others). This pass rebuilds each distinct configuration (``config_hash``) once and
measures all of them on the same device, with the same thread count and batch, in interleaved
rounds (round r measures every row, in a rotated order, before round r + 1 starts), so a load
spike hits a round, not a row. Each measurement is :func:`~csp_ablate.profile.throughput.measure_throughput`
(the median of timed passes); the report shows the rounds' mean ± 95 % interval.

A model is rebuilt from the job's ``.hydra/config.yaml`` when the job dir has one (a local sweep)
and that config hashes to the record's ``config_hash``; else from the record's axes (model,
gamma, fusion, activation, neck, extras, task, dataset), resolved through ``conf/model`` and
``conf/data`` as Hydra would (committed sweeps keep only their records). Weights are random:
throughput does not depend on them, except for a detector's decode + NMS, whose cost depends on
how many boxes the trained weights score above the threshold; so for a detector the network's
forward pass (backbone + neck + head) is timed as the paper's detector: RGB, 80 classes (COCO),
at its input (320) unless ``img_size`` is given -- the setting of Table 2's #Param and BFLOPs
columns and of the paper's fps. Classifiers are timed at the record's (trained) input, as in the
record.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from csp_ablate.atomic import write_csv_atomic
from csp_ablate.errors import ConfigError
from csp_ablate.profile.throughput import measure_throughput
from csp_ablate.report.records import read_records

log = logging.getLogger("csp_ablate.profile")

FPS_CSV = "fps.csv"
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
DETECTOR_IMG_SIZE = 320  # conf/task/detection.yaml profile.paper_img_size: the paper's detector input
DETECTOR_NUM_CLASSES = 80  # conf/task/detection.yaml profile.paper_num_classes: COCO
AXIS_KEYS = ("task", "dataset", "model", "gamma", "fusion", "neck", "extras", "activation")
FPS_COLUMNS = ["config_hash", "round", "fps", "latency_ms", "model", "gamma", "fusion", "neck", "extras",
               "activation", "task", "what", "source", "img_size", "fps_device", "fps_threads", "fps_batch",
               "passes", "channels_last", "loadavg_1m", "measured_at", "host"]


def sweep_configs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One entry per distinct ``config_hash`` of the completed records: its axes, img_size and,
    where the job dir has one that matches, the path of its ``.hydra/config.yaml``."""
    from csp_ablate.record import config_hash

    seen: dict[str, dict[str, Any]] = {}
    for rec in read_records(Path(sweep_dir)):
        key = rec.get("config_hash")
        if rec.get("status") != "completed" or not key:
            continue
        entry = seen.setdefault(key, {"config_hash": key, **{k: rec.get(k) for k in AXIS_KEYS},
                                      "img_size": rec.get("img_size"), "config": None})
        cfg_path = Path(sweep_dir) / Path(rec["_path"]).parent / ".hydra" / "config.yaml"
        if entry["config"] is None and cfg_path.is_file():
            try:
                job_cfg = OmegaConf.load(cfg_path)
                if job_cfg.get("threads") is None and rec.get("threads"):
                    # threads=null resolved in the job by its launcher's parallel jobs (joblib2: 1),
                    # which this process cannot see: the record says what it resolved to
                    job_cfg.threads = rec["threads"]
                if config_hash(job_cfg) == key:  # a rerun may have moved this record aside
                    entry["config"] = cfg_path
                else:
                    log.info("%s does not hash to its record's config_hash: rebuilt from the record's axes", cfg_path)
            except Exception as err:  # an unreadable config: fall back to the axes
                log.warning("cannot use %s: %s", cfg_path, err)
    return list(seen.values())


def _data_cfg(dataset: str | None) -> DictConfig:
    """The ``conf/data`` group whose file name (without ``_``) is the record's dataset name."""
    want = str(dataset or "").replace("_", "").lower()
    for path in sorted((CONF_DIR / "data").glob("*.yaml")):
        if path.stem.replace("_", "").lower() == want:
            return OmegaConf.load(path)
    raise ConfigError(f"no conf/data/*.yaml for the record's dataset {dataset!r}")


def config_from_axes(row: dict[str, Any]) -> DictConfig:
    """The part of a run config that builds the model, from a record's axes (no Hydra needed)."""
    model_file = CONF_DIR / "model" / f"{row['model']}.yaml"
    if not model_file.is_file():
        raise ConfigError(f"no conf/model/{row['model']}.yaml for the record's model")
    cfg = OmegaConf.load(model_file)
    for axis in ("gamma", "fusion", "activation"):
        value = row.get(axis)
        cfg[axis] = None if value is None or (isinstance(value, float) and value != value) else value
    cfg.data = _data_cfg(row.get("dataset"))
    extras = [e for e in str(row.get("extras") or "").split("+") if e]
    cfg.task = {"name": row.get("task") or "classification"}
    cfg.neck, cfg.extras = row.get("neck"), extras
    cfg.detector = {"anchors": "auto", "neck_channels": 128}
    return cfg


def build_for_fps(cfg: DictConfig, img_size: int) -> tuple[nn.Module, str, int]:
    """(model, what is timed, input channels) for a run config: the classifier as trained, or the
    paper's detector network (RGB, ``profile.paper_num_classes``: 80)."""
    from csp_ablate.models import create_backbone

    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    name = kwargs.pop("name")
    if cfg.task.name != "detection":
        channels = int(cfg.data.channels)
        model = create_backbone(name, num_classes=int(cfg.data.num_classes), in_chans=channels, **kwargs)
        return model, "classifier", channels
    from csp_ablate.models.detector import build_detector
    from csp_ablate.models.heads import YOLOV3_ANCHORS

    anchors = cfg.detector.get("anchors", "auto")  # values do not change the cost, only their count
    if anchors in (None, "auto"):
        anchors = [[(w * img_size / 416, h * img_size / 416) for w, h in scale] for scale in YOLOV3_ANCHORS]
    else:
        anchors = OmegaConf.to_container(anchors, resolve=True)
    num_classes = int(OmegaConf.select(cfg, "profile.paper_num_classes", default=DETECTOR_NUM_CLASSES))
    model = build_detector({"name": name, **kwargs}, cfg.neck, list(cfg.get("extras") or []),
                           num_classes=num_classes, anchors=anchors, in_chans=3,
                           neck_channels=int(cfg.detector.get("neck_channels", 128)))
    return model, f"detector network, RGB, {num_classes} classes (forward; no decode/NMS)", 3


def _fps_img_size(row: dict[str, Any], cfg: DictConfig, img_size: int | None) -> int:
    if img_size is not None:
        return int(img_size)
    if row.get("task") == "detection":
        return int(OmegaConf.select(cfg, "profile.paper_img_size", default=DETECTOR_IMG_SIZE))
    return int(row.get("img_size") or cfg.data.img_size)


def measure_sweep_fps(sweep_dir: Path, rounds: int = 5, batch: int = 1, threads: int | None = None,
                      img_size: int | None = None, warmup: int = 3, repeats: int = 10,
                      channels_last: bool = False, max_time_s: float | None = None) -> pd.DataFrame:
    """Tidy fps of every configuration of a sweep: one row per ``config_hash`` x round, in the order measured.

    Every model is built first; then ``rounds`` round-robin passes over them (order rotated each
    round) so that all rows share the same device, threads, batch and machine state."""
    if rounds < 2 or batch < 1:  # an interval needs two rounds
        raise ConfigError.bad_value("rounds/batch", (rounds, batch), "rounds >= 2 and batch >= 1")
    if threads is not None:
        torch.set_num_threads(int(threads))
    entries = sweep_configs(Path(sweep_dir))
    if not entries:
        raise FileNotFoundError(f"no completed record under {sweep_dir}/*/")
    built = []
    for row in entries:
        cfg = OmegaConf.load(row["config"]) if row["config"] is not None else config_from_axes(row)
        size = _fps_img_size(row, cfg, img_size)
        model, what, chans = build_for_fps(cfg, size)
        built.append((row, model, what, size, "job config" if row["config"] is not None else "record axes", chans))
    host, out = socket.gethostname(), []
    for r in range(rounds):
        shift = r % len(built)
        for row, model, what, size, source, chans in built[shift:] + built[:shift]:
            m = measure_throughput(model, size, chans, batch=batch, warmup=warmup, repeats=repeats,
                                   channels_last=channels_last, max_time_s=max_time_s)
            out.append({**{k: row.get(k) for k in ("config_hash", "model", "gamma", "fusion", "neck", "extras",
                                                   "activation", "task")},
                        "round": r, "fps": round(m["fps"], 3), "latency_ms": round(m["latency_ms"], 3),
                        "what": what, "source": source, "img_size": size, "fps_device": m["device"],
                        "fps_threads": m["threads"], "fps_batch": batch, "passes": m["repeats"],
                        "channels_last": channels_last, "loadavg_1m": m["loadavg_1m"],
                        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                        "host": host})
    return pd.DataFrame(out, columns=FPS_COLUMNS)  # in measurement order


def summarize(fps: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: median fps over the rounds, its min-max spread, rounds, device, threads, batch."""
    g = fps.groupby("config_hash", sort=False)
    return pd.DataFrame({
        "fps_median": g["fps"].median(), "fps_min": g["fps"].min(), "fps_max": g["fps"].max(),
        "rounds": g["round"].nunique(), "model": g["model"].first(), "neck": g["neck"].first(),
        "extras": g["extras"].first(), "img_size": g["img_size"].first(), "fps_device": g["fps_device"].first(),
        "fps_threads": g["fps_threads"].first(), "fps_batch": g["fps_batch"].first(),
    }).reset_index()


def write_sweep_fps(sweep_dir: Path, **kwargs: Any) -> pd.DataFrame:
    """Measure (:func:`measure_sweep_fps`) and write ``<sweep_dir>/fps.csv`` atomically."""
    fps = measure_sweep_fps(Path(sweep_dir), **kwargs)
    write_csv_atomic(Path(sweep_dir) / FPS_CSV, fps, float_format="%.6g")
    return fps
