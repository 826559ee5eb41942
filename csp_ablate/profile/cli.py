"""``python -m csp_ablate.profile``: the profiler's Hydra CLI (config ``conf/profiler.yaml``).

One model's cost (a table or JSON), a ``-m`` sweep into ``fidelity.csv|md``, the full fidelity
table (``fidelity=true``), the paper's Figure 7 (``figure7=classifier|detection``) or the memory
of the detectors' feature pyramid (``feature_pyramid=true``), or the quiet fps of every row of a
finished sweep (``sweep_dir=<dir>`` -> ``<dir>/fps.csv``, :mod:`csp_ablate.profile.sweep_fps`), or the
CSP transform's fidelity (``transform=true`` -> ``<out_dir>/transform``, :mod:`csp_ablate.profile.transform`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import torch

from csp_ablate.atomic import write_text_atomic
from csp_ablate.errors import ConfigError
from csp_ablate.profile.counting import per_layer_table
from csp_ablate.profile.fidelity import ModelSpec, build, evaluate, fidelity_specs, na_to_none, profile_spec
from csp_ablate.profile.figure7 import bottleneck_report, detection_figure7, detection_markdown, plot_per_layer
from csp_ablate.profile.markdown import cio_pairs, format_row, write_fidelity

log = logging.getLogger("csp_ablate.profile")

FORMATS: tuple[str, ...] = ("table", "json")
FIGURE7: tuple[str, ...] = ("classifier", "detection")


def check_cli(cfg) -> None:
    """Validate the profile config (axes through :func:`csp_ablate.validate.validate_config`)."""
    import numbers

    from omegaconf import OmegaConf

    from csp_ablate.validate import validate_config

    view = OmegaConf.create({"tier": "proxy", "seed": 0, "task": {"name": "classification"}, "neck": None,
                             "extras": [], "gamma": cfg.get("gamma"), "fusion": cfg.get("fusion"),
                             "activation": cfg.get("activation")})
    view.model = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=False))
    validate_config(view)

    def positive_int(key: str, value: Any, minimum: int = 1) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ConfigError.bad_value(key, value, f"an integer >= {minimum}")

    positive_int("img_size", cfg.img_size, 32)
    positive_int("num_classes", cfg.num_classes)
    if cfg.format not in FORMATS:
        raise ConfigError.bad_value("format", cfg.format, FORMATS)
    if cfg.threads is not None:
        positive_int("threads", cfg.threads)
    batches = cfg.fps_batches
    if isinstance(batches, (int, str)) or batches is None:
        raise ConfigError.bad_value("fps_batches", batches, "a list of batch sizes, e.g. fps_batches=[1,32]")
    for b in batches:
        positive_int("fps_batches", b)
    for key in ("fps_warmup", "fps_repeats"):
        positive_int(key, cfg[key])
    if not isinstance(cfg.out_dir, str) or not cfg.out_dir:
        raise ConfigError.bad_value("out_dir", cfg.out_dir, "a directory path")
    if cfg.figure7 is not None and cfg.figure7 not in FIGURE7:
        raise ConfigError.bad_value("figure7", cfg.figure7, FIGURE7)
    positive_int("detection.img_size", cfg.detection.img_size, 32)
    if cfg.get("sweep_dir") is not None:
        if not Path(str(cfg.sweep_dir)).is_dir():
            raise ConfigError.bad_value("sweep_dir", cfg.sweep_dir, "an existing sweep dir (job dirs with record.json)")
        positive_int("sweep_fps.rounds", cfg.sweep_fps.rounds, 2)  # an interval needs two rounds
        positive_int("sweep_fps.batch", cfg.sweep_fps.batch)
        if cfg.sweep_fps.img_size is not None:
            positive_int("sweep_fps.img_size", cfg.sweep_fps.img_size, 32)
    positive_int("detection.num_classes", cfg.detection.num_classes)


def _spec_from_cfg(cfg) -> ModelSpec:
    m = cfg.model
    return ModelSpec(m.name, m.get("gamma"), m.get("fusion"), m.get("activation") or "leaky")


def _fps_opts(cfg) -> dict[str, Any]:
    return dict(warmup=int(cfg.fps_warmup), repeats=int(cfg.fps_repeats), channels_last=bool(cfg.channels_last),
                max_time_s=float(cfg.fps_max_time_s) if cfg.fps_max_time_s else None)


def run_profile(cfg) -> dict[str, Any]:
    """The CLI's work for one (validated) config; returns what it printed as a dict."""
    import pandas as pd

    from omegaconf import OmegaConf

    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    out_dir = Path(cfg.out_dir)
    train = OmegaConf.to_container(cfg.train, resolve=True) if cfg.train_input else None
    fps_batches = list(cfg.fps_batches) if cfg.fps else []
    if cfg.get("sweep_dir") is not None:
        return run_sweep_fps(cfg)
    if cfg.get("transform"):
        from csp_ablate.profile.transform import write_transform_fidelity

        return {"rows": len(write_transform_fidelity(Path(cfg.out_dir) / "transform"))}
    if cfg.figure7 is not None:
        return run_figure7(cfg)
    if cfg.feature_pyramid:
        return run_feature_pyramid(cfg)
    if cfg.fidelity:
        rows = []
        for spec in fidelity_specs():
            size = 224 if spec.table == "table1" else 256
            log.info("profiling %s at %d", spec.label, size)
            print(f"[profile] {spec.label} @ {size} ...", file=sys.stderr, flush=True)
            rows.append(profile_spec(spec, size, cfg.num_classes, 3, train, fps_batches, _fps_opts(cfg)))
        bottleneck_report(out_dir)
        table = write_fidelity(pd.DataFrame(rows), out_dir, merge=bool(cfg.merge), command=_command_line())
        cio = pd.DataFrame(cio_pairs(table))
        write_text_atomic(out_dir / "cio.csv", cio.to_csv(index=False))
        if cfg.format == "json":
            print(json.dumps({"out_dir": str(out_dir), "rows": json.loads(table.to_json(orient="records"))}))
        else:
            print((out_dir / "fidelity.md").read_text())
            print(f"wrote {out_dir / 'fidelity.csv'}, {out_dir / 'fidelity.md'}, {out_dir / 'figure7_per_layer.png'}")
        return {"rows": len(table)}

    spec = _spec_from_cfg(cfg)
    extra = {"drop_rate": cfg.model.drop_rate} if "drop_rate" in cfg.model else {}
    row = profile_spec(spec, int(cfg.img_size), int(cfg.num_classes), 3, train, fps_batches, _fps_opts(cfg), extra)
    evaluated = evaluate(na_to_none(pd.DataFrame([row]))).iloc[0].to_dict()
    top = None
    if cfg.per_layer:
        model = build(spec, int(cfg.num_classes))
        layers = per_layer_table(model, int(cfg.img_size))
        write_text_atomic(out_dir / f"per_layer_{spec.slug}-{cfg.img_size}.csv", layers.to_csv(index=False))
        plot_per_layer({spec.label: layers}, out_dir / f"per_layer_{spec.slug}-{cfg.img_size}.png",
                       title=f"Per-layer BFLOPs at {cfg.img_size}x{cfg.img_size}")
        top = layers.nlargest(int(cfg.top_layers), "bflops")
    if cfg.save or _is_multirun():
        write_fidelity(pd.DataFrame([row]), out_dir, merge=True, command=_command_line())
    result = {**row, **{k: evaluated.get(k) for k in ("paper_params_m", "paper_bflops", "paper_bflops_delta_pct",
                                                      "params_diff_pct", "bflops_diff_pct", "status", "checks", "note")}}
    if cfg.format == "json":
        if top is not None:
            result["largest_layers"] = json.loads(top.to_json(orient="records"))
        print(json.dumps(_jsonable(result)))
    else:
        print(format_row(row, evaluated, top))
    return result


def run_figure7(cfg) -> dict[str, Any]:
    """``figure7=classifier``: PeleeNet vs CSPPeleeNet per layer at ``img_size`` into ``out_dir``;
    ``figure7=detection``: the three detectors at ``detection.img_size`` into ``detection.out_dir``."""
    if cfg.figure7 == "detection":
        out_dir = Path(cfg.detection.out_dir)
        summary = detection_figure7(out_dir, int(cfg.detection.img_size), int(cfg.detection.num_classes))
        text, names = detection_markdown(summary), "figure7_detection.csv|md|png"
    else:
        out_dir = Path(cfg.out_dir)
        summary, _ = bottleneck_report(out_dir, int(cfg.img_size))
        text, names = summary.to_string(index=False), "bottleneck.csv, figure7_per_layer.png, per_layer_*.csv"
    if cfg.format == "json":
        print(json.dumps({"out_dir": str(out_dir), "rows": json.loads(summary.to_json(orient="records"))}))
    else:
        print(text)
        print(f"wrote {out_dir}/{names}")
    return {"rows": len(summary)}


def run_feature_pyramid(cfg) -> dict[str, Any]:
    """``feature_pyramid=true``: memory of the PRN / GFM / EFM feature pyramids -> ``detection.out_dir``."""
    from csp_ablate.profile.pyramid import write_pyramid_memory

    out_dir = Path(cfg.detection.out_dir)
    table = write_pyramid_memory(out_dir, int(cfg.detection.img_size), int(cfg.detection.num_classes),
                                 command=_command_line() or "python -m csp_ablate.profile feature_pyramid=true")
    if cfg.format == "json":
        print(json.dumps({"out_dir": str(out_dir), "rows": json.loads(table.to_json(orient="records"))}))
    else:
        print((out_dir / "feature_pyramid_memory.md").read_text())
        print(f"wrote {out_dir}/feature_pyramid_memory.csv|md")
    return {"rows": len(table)}


def run_sweep_fps(cfg) -> dict[str, Any]:
    """``sweep_dir=<dir>``: quiet fps of every configuration of a finished sweep -> ``<dir>/fps.csv``."""
    from csp_ablate.profile.sweep_fps import FPS_CSV, summarize, write_sweep_fps

    sweep_dir = Path(cfg.sweep_dir)
    fps = write_sweep_fps(sweep_dir, rounds=int(cfg.sweep_fps.rounds), batch=int(cfg.sweep_fps.batch),
                          threads=cfg.threads, img_size=cfg.sweep_fps.img_size, warmup=int(cfg.fps_warmup),
                          repeats=int(cfg.fps_repeats), channels_last=bool(cfg.channels_last),
                          max_time_s=float(cfg.fps_max_time_s) if cfg.fps_max_time_s else None)
    summary = summarize(fps)
    if cfg.format == "json":
        print(json.dumps({"fps_csv": str(sweep_dir / FPS_CSV), "rows": json.loads(summary.to_json(orient="records"))}))
    else:
        print(summary.to_string(index=False))
        print(f"wrote {sweep_dir / FPS_CSV} ({len(fps)} measurements); rebuild the report: "
              f"python -m csp_ablate.report {sweep_dir}")
    return {"rows": len(summary)}


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _command_line() -> str:
    """The command that produced this output (Hydra's task overrides), for the report."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except Exception:  # not under Hydra (called from Python)
        return ""
    return " ".join(["python -m csp_ablate.profile", *overrides])


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # not under Hydra (called from Python)
        return False


def main() -> None:
    """``python -m csp_ablate.profile``: Hydra entry (config ``conf/profiler.yaml``)."""
    import hydra

    conf_dir = str(Path(__file__).resolve().parents[2] / "conf")

    @hydra.main(version_base="1.3", config_path=conf_dir, config_name="profiler")
    def _main(cfg) -> None:
        try:
            check_cli(cfg)
            run_profile(cfg)
        except ConfigError as err:
            print(f"csp_ablate.profile: error: {err}", file=sys.stderr)
            sys.exit(2)

    _main()
