"""Experiment tracking: W&B (default), CSV or none, chosen by the ``logger`` config group.

Everything the project does with W&B is here, so a W&B or Lightning upgrade touches one file:
the mode and the reachability probe, the run's init kwargs and group (:func:`wandb_group`), the
early start, the Lightning logger, and the few places that must use ``WandbLogger``'s private
attributes (:func:`continue_wandb_run`, :func:`close_wandb`), each behind a named function with
a test (``tests/test_tracking.py``).

W&B must never prompt or hang on a machine without network: ``mode=auto`` resolves to
``online`` only when an API key is configured and the server answers a TCP connect within
:data:`PROBE_TIMEOUT_S`, else ``offline`` (one warning line; the run lands in
``<run dir>/wandb/offline-run-*`` and can be pushed later with ``wandb sync``). An explicit
``mode=online`` with an unreachable server fails at once instead of stalling ~90 s in
``wandb.init``. Offline and disabled modes make no network call at all.
"""

from __future__ import annotations

import functools
import logging
import netrc
import os
import socket
import threading
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from csp_ablate.errors import ConfigError

WANDB_MODES = ("auto", "online", "offline", "disabled")
DEFAULT_BASE_URL = "https://api.wandb.ai"
#: Seconds to wait for the W&B server (DNS + TCP connect) before deciding it is unreachable.
PROBE_TIMEOUT_S = 5.0
log = logging.getLogger("csp_ablate")


def wandb_base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


@functools.cache
def server_unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the W&B server at ``url`` cannot be reached (None when a TCP connect succeeds).

    Runs in a daemon thread joined with a deadline, so a hanging DNS lookup cannot stall the
    job beyond ``timeout`` + 1 s. Cached: one probe per process and URL.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url if "//" in url else f"https://{url}")
    host = parts.hostname or ""
    port = parts.port or (80 if parts.scheme == "http" else 443)
    result: list[str | None] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(None)
        except OSError as err:
            result.append(f"{type(err).__name__}: {err}")

    thread = threading.Thread(target=probe, name="wandb-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return result[0] if result else f"no answer within {timeout:.0f} s"


def has_wandb_credentials() -> bool:
    """An API key in the environment or in ~/.netrc (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` → WANDB_MODE if the user set it, else online with credentials, else offline."""
    if mode not in WANDB_MODES:
        raise ConfigError.bad_value("logger.mode", mode, WANDB_MODES)
    if mode == "auto":
        env = os.environ.get("WANDB_MODE")
        if env in ("online", "offline", "disabled", "dryrun"):
            mode = "offline" if env == "dryrun" else env
            explicit = True
        else:
            mode, explicit = ("online" if has_wandb_credentials() else "offline"), False
    else:
        explicit = True
    if mode != "online":
        return mode  # no network call
    url = wandb_base_url()
    why = server_unreachable(url)
    if why is None:
        return "online"
    if explicit:
        raise ConfigError(
            f"Invalid value for 'logger.mode': 'online', but the W&B server {url} is unreachable ({why}). "
            f"Allowed: logger.mode=auto (falls back to offline when the server is unreachable), "
            f"offline (push later with `wandb sync`) or disabled."
        )
    _warn_offline_once(url, why)
    return "offline"


@functools.cache
def _warn_offline_once(url: str, why: str) -> None:
    log.warning("W&B server %s unreachable (%s): logging offline; push later with `wandb sync <run dir>/wandb/"
                "offline-run-*`", url, why)


def axis_tags(record: dict[str, Any]) -> list[str]:
    """W&B tags from the axes' values, e.g. ``fusion:last`` (filterable in the UI)."""
    from csp_ablate.axes import TAG_AXES

    return [f"{k}:{record[k]}" for k in TAG_AXES if record.get(k) not in (None, "")]


#: The W&B group of a single run launched without a sweep name.
ADHOC_GROUP = "adhoc"


def wandb_group(sweep: str | None, sweep_dir: str | Path | None = None) -> str:
    """The W&B group of a run: a named sweep's name; an ad-hoc multirun's sweep dir name after
    ``multirun-`` (``results/multirun/2026-11-29_10-00-00`` -> ``multirun-2026-11-29_10-00-00``),
    so a dashboard compares the runs of one multirun and not of every multirun ever launched;
    a single ad-hoc run: :data:`ADHOC_GROUP`."""
    if sweep:
        return str(sweep)
    if sweep_dir:
        return f"multirun-{Path(str(sweep_dir)).name}"
    return ADHOC_GROUP


def current_sweep_dir() -> str | None:
    """``hydra.sweep.dir`` inside a Hydra multirun job, else None."""
    from hydra.core.hydra_config import HydraConfig

    from csp_ablate.record import is_multirun

    return str(HydraConfig.get().sweep.dir) if is_multirun() else None


def _wandb_init_kwargs(cfg: DictConfig, record: dict[str, Any]) -> dict[str, Any]:
    import wandb

    return dict(
        project=cfg.logger.project,
        entity=cfg.logger.get("entity"),
        group=wandb_group(record.get("sweep"), current_sweep_dir()),
        job_type="train",
        name=record["run_id"],
        tags=axis_tags(record),
        dir=str(Path(str(cfg.output_dir))),
        mode=resolve_wandb_mode(cfg.logger.get("mode", "auto")),
        config=OmegaConf.to_container(cfg, resolve=True),
        settings=wandb.Settings(silent=True),
        reinit="finish_previous",  # a sweep worker never logs into a previous job's run
    )


class EarlyWandbRun:
    """Opens the W&B run in a background thread while the job loads data and builds the model.

    ``wandb.init`` spends seconds starting W&B's service process; a sweep pays that per job
    (benchmarks/bench_job_overhead.py). Started once the data files are known to exist, it
    overlaps the data decode, model build and cost count instead of stalling ``Trainer.fit``.
    :meth:`result` joins and re-raises any init error in the caller's thread.
    """

    def __init__(self, cfg: DictConfig, record: dict[str, Any]) -> None:
        self._kwargs = _wandb_init_kwargs(cfg, record)
        self._run = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, name="wandb-init", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        import wandb

        try:
            self._run = wandb.init(**self._kwargs)
        except BaseException as exc:  # surfaced by result()
            self._error = exc

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._run

    def abort(self, exit_code: int = 1) -> None:
        """Close the run if it opened (the job failed before a logger took it over)."""
        self._thread.join()
        if self._run is not None:
            self._run.finish(exit_code=exit_code)


def start_wandb_early(cfg: DictConfig, record: dict[str, Any]) -> EarlyWandbRun | None:
    """An :class:`EarlyWandbRun` for ``logger=wandb`` (not disabled), else ``None``."""
    if cfg.logger.name != "wandb" or resolve_wandb_mode(cfg.logger.get("mode", "auto")) == "disabled":
        return None
    return EarlyWandbRun(cfg, record)


def resumable_csv_logger(save_dir: str, resume_step: int | None):
    """Lightning's CSVLogger writing ``<save_dir>/csv/metrics.csv``, continued across launches.

    Lightning's writer deletes an existing ``metrics.csv`` when it opens its directory, so a
    resumed job would lose the curves of its earlier launches. With ``resume_step`` (the step
    of the checkpoint this launch resumes from) the earlier rows up to that step are kept and
    this launch appends to them; rows after it were trained again from the checkpoint and are
    dropped, so every step appears once. A fresh run (``None``) starts a new file, as before.
    """
    import csv

    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter
    from lightning.pytorch.loggers.logger import rank_zero_experiment

    from csp_ablate.atomic import atomic_path

    class ContinuingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            path = Path(self.metrics_file_path)
            if resume_step is None or not path.is_file():
                super()._check_log_dir_exists()  # fresh run: Lightning's behaviour
                return
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                keys = list(reader.fieldnames or [])
                rows = [r for r in reader if not r.get("step") or int(float(r["step"])) <= resume_step]
            with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(rows)
            self.metrics_keys = sorted(keys)  # new keys later extend the header, old rows kept

    class ContinuingCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self):
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = ContinuingWriter(log_dir=self.log_dir)
            return self._experiment

    return ContinuingCSVLogger(save_dir=save_dir, name="csv", version="")


def build_logger(cfg: DictConfig, record: dict[str, Any], early: EarlyWandbRun | None = None,
                 resume_step: int | None = None):
    """The Lightning logger for this run, or ``None`` for ``logger=none``.

    With ``early`` (an already started W&B run) the WandbLogger adopts that run; with
    ``resume_step`` the CSV logger continues the earlier launches' ``metrics.csv``.
    """
    name = cfg.logger.name
    out_dir = Path(str(cfg.output_dir))
    if name == "none":
        return None
    if name == "csv":
        return resumable_csv_logger(str(out_dir), resume_step)
    if name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        kwargs = _wandb_init_kwargs(cfg, record)
        kwargs["save_dir"] = kwargs.pop("dir")
        if early is not None:
            return WandbLogger(experiment=early.result(), **kwargs)
        return WandbLogger(**kwargs)
    raise ConfigError.bad_value("logger", name, ("wandb", "csv", "none"))


def finish_logger(logger, record: dict[str, Any]) -> None:
    """Put the record's metrics into the W&B summary and close the run (files are flushed)."""
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        run = logger.experiment
        summary = {k: v for k, v in record.items() if isinstance(v, (int, float, str)) and v is not None}
        run.summary.update(summary)
        record["wandb_run_id"] = run.id
        record["wandb_dir"] = str(Path(run.dir).parent)
        run.finish()


# ---- the WandbLogger internals we depend on (Lightning 2.x), in one place ----------------------
def wandb_logger(logger: Any) -> Any:
    """``logger`` if it is Lightning's WandbLogger, else None (by name: wandb stays unimported)."""
    return logger if type(logger).__name__ == "WandbLogger" else None


def continue_wandb_run(logger: Any, run_id: str) -> bool:
    """Point a not yet started WandbLogger at the existing run ``run_id`` (a resumed job logs
    into the same W&B run). WandbLogger has no public way to do this: it keeps its
    ``wandb.init`` kwargs in ``_wandb_init`` and its run in ``_experiment``. Returns False
    (and warns) when those internals are not as expected, so the resumed job logs as a new run."""
    wb = wandb_logger(logger)
    if wb is None:
        return False
    init = getattr(wb, "_wandb_init", None)
    if isinstance(init, dict) and getattr(wb, "_experiment", None) is None:
        init.update(id=run_id, resume="allow")
        wb._id = run_id
        return True
    log.warning("could not point the W&B logger at run %s: the resumed run logs as a new W&B run", run_id)
    return False


def close_wandb(logger: Any, exit_code: int) -> bool:
    """Mark an open W&B run as finished with ``exit_code``; never create a run just to close it
    (``logger.experiment`` would start one, so the private ``_experiment`` is checked first)."""
    wb = wandb_logger(logger)
    if wb is None or getattr(wb, "_experiment", None) is None:
        return False
    wb.experiment.finish(exit_code=exit_code)
    return True


def wandb_run_id(logger: Any) -> str | None:
    """The id of ``logger``'s W&B run (starting it if needed), None for another logger."""
    wb = wandb_logger(logger)
    return None if wb is None else wb.experiment.id
