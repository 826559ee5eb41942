"""Seed planning: how many seeds a named sweep's claims need, within a time budget, and running them.

    python -m csp_ablate -m sweep=table1 seeds=auto budget_min=120 dry_run=true   # print the plan
    python -m csp_ablate -m sweep=table1 seeds=auto budget_min=120                # run it
    python -m csp_ablate.plan sweep=table1 budget_min=120 [dry_run=true]          # the same

1. Pilot: every row of the sweep's grid gets n = 3 seeds (``seed=0,1,2``); completed records in
   the sweep dir are reused, so a finished pilot costs nothing.
2. Plan from the pilot's *pooled within-row variance only*: for every statistical claim of the
   spec, the seeds per row that give 80 % power to reproduce the paper's effect (direction
   claims: an effect of δ; "only 0.1" claims: the TOST at the paper's value), the same
   ``seeds_needed`` as claims.csv (csp_ablate.report.verdicts). The pilot's *effect* is not
   used: choosing n from an observed difference (conditional power, "add seeds until it is
   significant") inflates the error rates, while the variance estimate is independent of the
   difference of means, so planning on it keeps the tests' α (an internal pilot, Wittes &
   Brittain 1990). The pilot's runs are part of the final analysis.
3. Budget: ``budget_min`` is the sweep's whole wall time, pilot included. What its records
   already cost is spent (their job minutes over the parallel jobs; a copy reused from a
   sibling sweep costs nothing), so a relaunch of the same command plans the same rest
   instead of a fresh budget each time. Rows are topped up claim by claim, cheapest first (a
   baseline shared by many claims is paid once), while the expected wall time stays within
   what is left. A job's minutes are the measured wall time of the row's completed records
   (``finished_at - started_at``, else ``train_time_s``), divided by the launcher's parallel
   jobs (``joblib2``: 2). Claims that do not fit, or need more than ``max_seeds``, are listed.
   A run that a sibling sweep of the tier completed (same ``config_hash`` and seed, hashed here
   as the job will hash it) is copied by the job (:mod:`csp_ablate.sweep`), so it is planned at
   no cost, and its measured minutes price the row's runs that do train (Figure 4 after Table 1).
   The spent minutes are an estimate from the records (completed and failed; divided by this
   launch's parallel jobs): a stopped job's lost partial epoch and the launchers' start-up are
   not in it (Table 1's rerun: 278 min from its records, 286 min of launches). The pilot and
   the floor are run whatever the budget; it decides the power-driven top-up.
4. Run: one Hydra multirun per planned n (``python -m csp_ablate -m sweep=... seed=0,...,n-1
   variant=...``) into the sweep dir; completed grid points are skipped, so an interrupted
   plan is resumed by running the same command again. Other overrides (``tier=smoke``,
   ``hydra.sweep.dir=...``) are passed on to every multirun. Stop it like a sweep: Ctrl-C, or
   ``kill -TERM -- -<pgid>`` (the multiruns and their workers share the planner's process group).

Options (``key=value``): ``budget_min`` (required to run: minutes of the sweep's whole wall
time, what its records already cost included), ``dry_run`` (print only), ``jobs``
(parallel jobs; default: the sweep's launcher), ``power`` (0.8), ``max_seeds`` (30),
``min_seeds`` (5, from the pilot's 3 to ``max_seeds``: the floor of every row a statistical
claim compares (top-1, AP; not the exact BFLOPs counts, nor fps: an fps claim is judged on the
rounds of the quiet fps pass, so more seeds cannot resolve it), planned even when the power
analysis asks for fewer or the budget is short; the plan says so, and a claim the floor already
pays is ``planned``, never "over budget").
Imports no torch; the multiruns are subprocesses.
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from csp_ablate.report.spec import SWEEPS_DIR, ReportSpec, load_spec
from csp_ablate.threads import launcher_jobs

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PILOT_SEEDS = 3
#: Seeds every row that a statistical (top-1/AP) claim compares gets at least (issue 18).
MIN_SEEDS = 5
PLAN_KEYS = ("seeds", "budget_min", "dry_run", "jobs", "power", "max_seeds", "min_seeds")


@dataclass
class SweepGrid:
    """What the planner needs of ``sweeps/<name>.yaml``: where it writes and how rows are selected."""
    name: str
    sweep_dir: Path
    row_key: str  # the grid axis that selects a row (``variant`` in every named sweep)
    row_values: dict[str, str]  # spec row id -> value of row_key
    parallel: int
    tier: str = "proxy"


@dataclass
class Plan:
    grid: SweepGrid
    budget_min: float
    sd: dict[str, tuple[float, int]]  # metric -> pooled SD, df
    pilot: dict[str, int]  # row -> runs missing to n = 3
    rows: pd.DataFrame  # row, n_now, n_planned, pilot_runs, new_runs (top-up), copies, min_per_job, minutes
    claims: pd.DataFrame  # claim, metric, paper, seeds_needed, status
    pilot_minutes: float
    minutes: float  # expected sweep wall time of the top-up
    spent_min: float = 0.0  # wall time the sweep's records (completed, failed; not copies) already cost
    notes: list[str] = field(default_factory=list)

    @property
    def left_min(self) -> float:
        return self.budget_min - self.spent_min

    @property
    def pilot_done(self) -> bool:
        return not any(self.pilot.values())


# ---- the sweep's grid ---------------------------------------------------------------------
def _norm(value: Any) -> Any:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, list):
        return "+".join(sorted(str(v) for v in value))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _value_axes(key: str, value: str) -> dict[str, Any]:
    """The axes one grid value sets (a ``variant`` file's overrides and keys, else ``{key: value}``)."""
    if key != "variant":
        return {key: value}
    raw = yaml.safe_load((CONF_DIR / "variant" / f"{value}.yaml").read_text()) or {}
    top = yaml.safe_load((CONF_DIR / "config.yaml").read_text()) or {}
    axes: dict[str, Any] = {k: top.get(k) for k in ("activation", "extras")}  # what a variant may leave out
    for item in raw.get("defaults") or []:
        if isinstance(item, dict):
            axes.update({k.split("/", 1)[1]: v for k, v in item.items() if k.startswith("override /")})
    axes.update({k: v for k, v in raw.items() if k in ("gamma", "fusion", "activation", "extras", "neck")})
    return axes


def sweep_grid(name: str, overrides: list[str], jobs: int | None = None) -> SweepGrid:
    """Read ``sweeps/<name>.yaml``: the row axis of its grid, its sweep dir and its parallelism."""
    raw = yaml.safe_load((SWEEPS_DIR / f"{name}.yaml").read_text()) or {}
    spec = load_spec(name)
    if spec is None:
        raise ValueError(f"sweep '{name}' has no report spec (sweeps/{name}.yaml `report:`): nothing to plan")
    params = {k: str(v) for k, v in (raw.get("hydra", {}).get("sweeper", {}).get("params") or {}).items()}
    keys = [k for k in params if k != "seed"]
    if len(keys) != 1:
        raise ValueError(f"sweep '{name}': planning needs one row axis besides seed in its grid, got {keys}")
    key = keys[0]
    values = [v.strip() for v in params[key].split(",") if v.strip()]
    row_values: dict[str, str] = {}
    for value in values:
        axes = {k: _norm(v) for k, v in _value_axes(key, value).items()}
        hits = [r.id for r in spec.rows if all(_norm(r.axes[k]) == axes[k] for k in spec.match if k in axes)]
        if len(hits) != 1:
            raise ValueError(f"sweep '{name}': {key}={value} matches rows {hits} of the report spec, not one")
        row_values[hits[0]] = value
    given = dict(o.split("=", 1) for o in overrides if "=" in o)
    tier = given.get("tier", "proxy")
    sweep_dir = Path(given.get("hydra.sweep.dir", f"results/{tier}/{name}"))
    return SweepGrid(name, sweep_dir, key, row_values, jobs or _parallel(raw, given), tier)


def _parallel(raw: dict, given: dict[str, str]) -> int:
    """Jobs at once under the sweep's launcher (joblib ``n_jobs``, -1: every core), 1 for
    ``basic`` and SLURM (whose jobs run elsewhere)."""
    if "hydra.launcher.n_jobs" in given:
        return launcher_jobs({"_target_": "joblib", "n_jobs": int(given["hydra.launcher.n_jobs"])})
    launcher = given.get("hydra/launcher")
    for item in raw.get("defaults") or []:
        if isinstance(item, dict) and "override /hydra/launcher" in item and launcher is None:
            launcher = item["override /hydra/launcher"]
    path = CONF_DIR / "hydra" / "launcher" / f"{launcher}.yaml"
    if launcher == "joblib":  # Hydra's own: n_jobs -1
        return launcher_jobs({"_target_": "joblib", "n_jobs": -1})
    if launcher and path.exists():
        conf = yaml.safe_load(path.read_text()) or {}
        if "joblib" in (conf.get("defaults") or []):  # ours on top of Hydra's joblib (joblib2)
            return launcher_jobs({"_target_": "joblib", "n_jobs": conf.get("n_jobs", -1)})  # -1: every core
    return 1


# ---- copies from sibling sweeps of the tier ----------------------------------------------
@dataclass
class Copies:
    """What the tier's other sweeps already completed of this sweep's grid (csp_ablate.sweep
    copies it instead of training): per row, its seeds and its jobs' mean measured minutes."""
    seeds: dict[str, set[int]] = field(default_factory=dict)
    minutes: dict[str, float] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def row_hashes(grid: SweepGrid, passthrough: list[str]) -> dict[str, str]:
    """Each row's ``config_hash`` as its multirun jobs compute it (:mod:`csp_ablate.identity`):
    the config composed in-process with the overrides the multiruns get, its job-control keys
    removed, ``threads`` resolved for the jobs the composed launcher runs at once (not the
    planner's ``jobs=`` option, which only prices the plan)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from csp_ablate.identity import config_hash
    from csp_ablate.sweep import pop_job_control
    from csp_ablate.threads import resolve_threads

    hashes = {}
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            for row, value in grid.row_values.items():
                cfg = compose(config_name="config", return_hydra_config=True,
                              overrides=[f"sweep={grid.name}", f"{grid.row_key}={value}", *passthrough])
                pop_job_control(cfg)
                with open_dict(cfg):
                    cfg.threads = resolve_threads(cfg, jobs=launcher_jobs(cfg.hydra.launcher))
                    del cfg["hydra"]
                hashes[row] = config_hash(cfg)
    finally:
        GlobalHydra.instance().clear()
    return hashes


def sibling_copies(grid: SweepGrid, passthrough: list[str]) -> Copies:
    """The seeds of each row that another sweep dir of the tier has completed (same config
    hash), which this sweep's jobs will copy rather than train (:func:`csp_ablate.sweep.find_in_tier`)."""
    from csp_ablate.sweep import all_completed, tier_siblings

    siblings = tier_siblings(grid.sweep_dir, grid.tier)
    if not siblings:
        return Copies()
    force = dict(o.split("=", 1) for o in passthrough if "=" in o).get("force", "false")
    if force.lower() in ("1", "true", "yes"):  # force=true retrains every point: nothing is copied
        return Copies()
    try:
        hashes = row_hashes(grid, passthrough)
    except Exception as err:  # an override the planner cannot compose: price every run (safe side)
        return Copies(notes=[f"copies from sibling sweeps not priced ({type(err).__name__}: {err}): "
                             "every missing run counted at full cost"])
    row_of = {h: r for r, h in hashes.items()}
    hits = [{"row": row_of[rec["config_hash"]], "seed": rec["seed"], "sweep": other.name,
             **{k: rec.get(k) for k in ("finished_at", "started_at", "train_time_s")}}
            for other in siblings for _, rec in all_completed(other)
            if rec.get("config_hash") in row_of and isinstance(rec.get("seed"), int)]
    if not hits:
        return Copies()
    frame = pd.DataFrame(hits).assign(minutes=lambda f: job_minutes(f))
    return Copies(seeds=frame.groupby("row")["seed"].apply(set).to_dict(),
                  minutes=frame.groupby("row")["minutes"].mean().dropna().to_dict(),
                  sources=list(dict.fromkeys(frame["sweep"])))


# ---- the plan -----------------------------------------------------------------------------
def job_minutes(runs: pd.DataFrame) -> pd.Series:
    """Measured minutes per completed job: wall time of the record, else its training time."""
    wall = (pd.to_datetime(runs["finished_at"], errors="coerce", utc=True)
            - pd.to_datetime(runs["started_at"], errors="coerce", utc=True)).dt.total_seconds()
    return wall.fillna(pd.to_numeric(runs["train_time_s"], errors="coerce")) / 60.0


def spent_minutes(runs: pd.DataFrame, parallel: int) -> float:
    """Sweep wall time the sweep's records cost, completed and failed: per record the larger of
    its last launch's wall time and its training time summed over launches (a resumed record's
    ``started_at`` is its last launch's), over ``parallel`` jobs at once; copies are free."""
    if runs.empty:
        return 0.0
    trained = runs[runs["reused_from"].isna()] if "reused_from" in runs else runs
    wall = job_minutes(trained)
    train = pd.to_numeric(trained["train_time_s"], errors="coerce") / 60.0
    return float(pd.concat([wall, train], axis=1).max(axis=1).fillna(0.0).sum()) / parallel


def make_plan(runs: pd.DataFrame, spec: ReportSpec, grid: SweepGrid, budget_min: float,
              power: float = 0.8, max_seeds: int = 30, min_seeds: int = MIN_SEEDS,
              copies: Copies | None = None) -> Plan:
    """The pilot still missing and the top-up of the rows the claims need, within what is left of
    ``budget_min`` after what the sweep's records cost. ``copies``: the seeds of each row that
    a sibling sweep of the tier has completed (:func:`sibling_copies`): a job copies them, so
    they cost nothing, and their measured minutes price a row this sweep has not run yet."""
    from csp_ablate.report.tables import assign_rows, evidence_for, statistical_test
    from csp_ablate.report.verdicts import seeds_needed

    copies = copies or Copies()
    frame = runs.assign(row=assign_rows(runs, spec)) if not runs.empty else runs.assign(row=pd.Series(dtype="string"))
    done = frame[frame["status"] == "completed"] if not frame.empty else frame
    n_now = {rid: int((done["row"] == rid).sum()) for rid in grid.row_values}
    minutes = job_minutes(done) if not done.empty else pd.Series(dtype=float)
    known = [m for m in (*minutes.dropna(), *copies.minutes.values()) if not math.isnan(m)]
    overall = sum(known) / len(known) if known else math.nan
    per_job = {rid: float(minutes[done["row"] == rid].mean()) if (done["row"] == rid).any() else math.nan
               for rid in grid.row_values}
    per_job = {rid: copies.minutes.get(rid, overall) if math.isnan(m) else m for rid, m in per_job.items()}

    done_seeds = {rid: set(pd.to_numeric(done.loc[done["row"] == rid, "seed"], errors="coerce").dropna().astype(int))
                  for rid in grid.row_values}

    def missing(row: str, n: int) -> list[int]:
        """Seeds 0..n-1 of ``row`` with no completed record here (the multiruns run ``seed=0,...,n-1``)."""
        return [s for s in range(n) if s not in done_seeds[row]]

    def to_reach(row: str, n: int) -> float:
        """Sweep minutes until ``row`` has seeds 0..n-1; a seed a sibling sweep completed is copied: free."""
        trained = sum(1 for s in missing(row, n) if s not in copies.seeds.get(row, ()))
        return trained * per_job[row] / grid.parallel if trained else 0.0

    def runs_cost(row: str, have: int, n: int) -> float:
        """Sweep minutes from ``have`` seeds (already planned) to ``n``."""
        if n <= have:
            return 0.0
        extra = to_reach(row, n) - to_reach(row, have)
        return extra if math.isnan(extra) else max(0.0, extra)  # nan: no measured minutes yet

    pilot = {rid: len(missing(rid, PILOT_SEEDS)) for rid in grid.row_values}
    pilot_minutes = sum(to_reach(r, PILOT_SEEDS) for r in grid.row_values)
    spent = spent_minutes(frame, grid.parallel)
    left = budget_min - spent
    notes = [] if not any(pilot.values()) else [
        "pilot incomplete: the top-up below is provisional and is planned again once the pilot is done"]
    if math.isnan(overall):
        notes.append("no measured job yet: minutes unknown, the budget is checked after the pilot")

    claims, sd = [], {}
    target = dict(n_now)
    for claim in spec.claims:
        if claim.metric == "bflops":
            continue
        if claim.metric == "fps":  # judged on the quiet fps pass's rounds (csp_ablate.report.quiet_fps)
            claims.append({"claim": claim.id, "metric": claim.metric,
                           "paper": claim.paper if claim.paper is not None else claim.direction,
                           "seeds_needed": math.nan, "rows": (),
                           "status": "rounds, not seeds: python -m csp_ablate.profile sweep_dir=<dir> sweep_fps.rounds=N"})
            continue
        if claim.row not in grid.row_values or claim.vs not in grid.row_values:
            claims.append({"claim": claim.id, "metric": claim.metric, "paper": claim.paper, "seeds_needed": math.nan,
                           "rows": (), "status": "a row is not in the sweep's grid"})
            continue
        ev = evidence_for(frame, spec, claim.metric)(claim.row, claim.vs) if not frame.empty else None
        need = math.nan
        if ev is not None and ev.sigma == ev.sigma:
            if ev.model == "pooled":
                sd.setdefault(claim.metric, (ev.sigma, int(ev.df)))
            need = seeds_needed(statistical_test(claim)[0], ev, power=power, max_seeds=max_seeds)
        claims.append({"claim": claim.id, "metric": claim.metric,
                       "paper": claim.paper if claim.paper is not None else claim.direction,
                       "seeds_needed": need, "rows": (claim.row, claim.vs),
                       "status": "no variance yet" if ev is None or ev.sigma != ev.sigma
                       else (f"out of reach (> {max_seeds} seeds)" if need != need else None)})
    # the floor: every row a statistical claim compares gets min_seeds (issue 18: n >= 5), even
    # when the power analysis asks for fewer; it is paid before any power-driven top-up
    floor_rows = {r for c in claims if c["rows"] for r in c["rows"]}
    floor = {r: len(missing(r, min_seeds)) - len(missing(r, PILOT_SEEDS)) for r in floor_rows}
    total = sum(runs_cost(r, PILOT_SEEDS, min_seeds) for r in floor_rows)
    for r in floor_rows:
        target[r] = max(target[r], min_seeds)
    if total + pilot_minutes > left:
        notes.append(f"the floor of {min_seeds} seeds per claim row alone needs ~{total + pilot_minutes:.0f} min "
                     f"> {max(left, 0):.0f} min left of the budget: it is planned anyway")
    open_claims = [c for c in claims if c["status"] is None]
    while open_claims:  # greedy: the claim whose missing runs cost least, given what is planned
        def cost(c):
            return sum(runs_cost(r, max(target[r], PILOT_SEEDS), int(c["seeds_needed"])) for r in set(c["rows"]))
        best = min(open_claims, key=cost)
        open_claims.remove(best)
        extra = cost(best)
        if math.isnan(extra) or extra == 0 or total + pilot_minutes + extra <= left:  # 0: planned or copies
            more = any(int(best["seeds_needed"]) > target[r] for r in best["rows"])
            for r in set(best["rows"]):
                target[r] = max(target[r], int(best["seeds_needed"]))
            total += 0.0 if math.isnan(extra) else extra
            floored = any(floor.get(r, 0) for r in best["rows"])
            best["status"] = "planned" if more or floored else "enough seeds already"
        else:
            best["status"] = f"over budget (+{extra:.0f} min)"
    # pilot_runs (to n = 3) and new_runs (the top-up beyond it) apart: while the pilot runs, a
    # table of zeros in new_runs read as "nothing to do" next to "20 run(s) missing"
    planned = {r: max(target[r], PILOT_SEEDS) for r in grid.row_values}
    rows = pd.DataFrame([{"row": r, "n_now": n_now[r], "n_planned": planned[r],
                          "pilot_runs": pilot[r],
                          "new_runs": len(missing(r, planned[r])) - pilot[r],
                          "copies": sum(1 for s in missing(r, planned[r]) if s in copies.seeds.get(r, ())),
                          "min_per_job": per_job[r], "minutes": to_reach(r, planned[r])}
                         for r in grid.row_values])
    if rows["copies"].any():
        notes.append(f"{int(rows['copies'].sum())} of the planned run(s) are copies of records a sibling sweep of the "
                     f"tier completed ({', '.join(copies.sources)}): free, counted in no minutes")
    notes.extend(copies.notes)
    table = pd.DataFrame(claims).drop(columns="rows") if claims else pd.DataFrame()
    return Plan(grid, budget_min, sd, pilot, rows, table, pilot_minutes, total, spent_min=spent, notes=notes)


def commands(plan: Plan, passthrough: list[str]) -> list[list[str]]:
    """The multiruns: the pilot (if missing), then one per planned n; each is resumable."""
    base = [sys.executable, "-m", "csp_ablate", "-m", f"sweep={plan.grid.name}"]
    out = []
    pilot_rows = [r for r, k in plan.pilot.items() if k > 0]
    if pilot_rows:
        out.append([*base, f"seed={','.join(map(str, range(PILOT_SEEDS)))}",
                    f"{plan.grid.row_key}={','.join(plan.grid.row_values[r] for r in pilot_rows)}", *passthrough])
    top = plan.rows[plan.rows["new_runs"] > 0]
    for n, group in top.groupby("n_planned", sort=True):
        values = ",".join(plan.grid.row_values[r] for r in group["row"])
        out.append([*base, f"seed={','.join(map(str, range(int(n))))}", f"{plan.grid.row_key}={values}", *passthrough])
    return out


def format_plan(plan: Plan, cmds: list[list[str]]) -> str:
    sd = "; ".join(f"{m} SD {s:.3f} (df {df})" for m, (s, df) in plan.sd.items()) or "no pooled SD yet"
    pilot_runs = sum(plan.pilot.values())
    lines = [f"Seed plan for sweep {plan.grid.name} ({plan.grid.sweep_dir}), {plan.grid.parallel} job(s) at once, "
             f"budget {plan.budget_min:.0f} min of sweep wall time, ~{plan.spent_min:.0f} spent by its "
             f"records, ~{max(plan.left_min, 0):.0f} left. Planned from the pilot's pooled seed variance only ({sd}), "
             "80 % power, α = 0.05 (csp_ablate/plan.py says why not from its effect).",
             f"Pilot (n = {PILOT_SEEDS} per row): " + ("complete." if not pilot_runs else
                                                        f"{pilot_runs} run(s) missing, ~{plan.pilot_minutes:.0f} min."),
             *plan.notes, ""]
    if not plan.claims.empty:
        lines += [plan.claims.to_markdown(index=False, floatfmt="g"), ""]
    lines += [plan.rows.to_markdown(index=False, floatfmt=".1f"), ""]
    new = int(plan.rows["new_runs"].sum())
    copied = int(plan.rows["copies"].sum())
    lines.append(f"Expected: {pilot_runs + new} new run(s){f' ({copied} of them copies)' if copied else ''}, "
                 f"~{plan.pilot_minutes + plan.minutes:.0f} min of sweep wall "
                 f"time (pilot {plan.pilot_minutes:.0f} + top-up {plan.minutes:.0f}; {max(plan.left_min, 0):.0f} left of budget "
                 f"{plan.budget_min:.0f}).")
    lines += ["Commands (resumable: completed grid points are skipped):", *("  python " + " ".join(c[1:]) for c in cmds)]
    return "\n".join(lines)


# ---- the command line ---------------------------------------------------------------------
def parse_argv(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """``key=value`` tokens: the planner's options, and the overrides passed on to Hydra."""
    options, passthrough = {}, []
    for token in argv:
        if token in ("-m", "--multirun"):
            continue
        key, sep, value = token.partition("=")
        if sep and key in (*PLAN_KEYS, "sweep", "dry-run"):
            options[key.replace("-", "_")] = value
        elif token == "--dry-run":
            options["dry_run"] = "true"
        else:
            passthrough.append(token)
    return options, passthrough


def build(options: dict[str, str], passthrough: list[str]) -> tuple[Plan, list[list[str]]]:
    from csp_ablate.report.records import runs_frame

    name = options.get("sweep")
    if not name:
        raise ValueError("seed planning needs a named sweep: sweep=table1|figure4|table2")
    if options.get("seeds", "auto") != "auto":
        raise ValueError(f"seeds={options['seeds']}: the planner only knows seeds=auto")
    grid = sweep_grid(name, passthrough, int(options["jobs"]) if "jobs" in options else None)
    runs = runs_frame(grid.sweep_dir) if grid.sweep_dir.is_dir() else pd.DataFrame(columns=_record_keys())
    max_seeds, min_seeds = int(options.get("max_seeds", 30)), int(options.get("min_seeds", MIN_SEEDS))
    if not PILOT_SEEDS <= min_seeds <= max_seeds:
        raise ValueError(f"min_seeds={min_seeds} with max_seeds={max_seeds}: the floor must lie between the "
                         f"pilot's {PILOT_SEEDS} seeds and max_seeds (min_seeds defaults to {MIN_SEEDS})")
    plan = make_plan(runs, load_spec(name), grid, float(options.get("budget_min", "inf")),
                     float(options.get("power", 0.8)), max_seeds, min_seeds, sibling_copies(grid, passthrough))
    return plan, commands(plan, passthrough)


def _record_keys() -> list[str]:
    from csp_ablate.record import RECORD_KEYS

    return RECORD_KEYS


def main(argv: list[str] | None = None) -> int:
    options, passthrough = parse_argv(list(sys.argv[1:] if argv is None else argv))
    dry = options.get("dry_run", "false").lower() in ("1", "true", "yes")
    try:
        if not dry and "budget_min" not in options:
            raise ValueError("give budget_min=<minutes> (or dry_run=true to see the plan)")
        plan, cmds = build(options, passthrough)
    except (ValueError, FileNotFoundError) as err:
        print(f"csp_ablate.plan: error: {err}", file=sys.stderr)
        return 2
    print(format_plan(plan, cmds), flush=True)
    if dry:
        return 0
    if not plan.pilot_done:  # run whatever the budget, like the floor: a relaunch finishes it
        rc = subprocess.run(cmds[0], check=False).returncode
        if rc:
            return rc
        plan, cmds = build(options, passthrough)  # planned again from the pilot's variance and spent minutes
        print("\nAfter the pilot:\n" + format_plan(plan, cmds), flush=True)  # a partly failed pilot: retried once
    for cmd in cmds:
        rc = subprocess.run(cmd, check=False).returncode
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
