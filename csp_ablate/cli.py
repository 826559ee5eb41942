"""What wraps Hydra's entry point: concise errors, duplicated overrides, exit codes, Ctrl-C.

Hydra prints its own errors (unknown key, unknown group option) in 6-17 lines and exits 1, keeps
the last of two overrides of one key, and a multirun exits 0 whatever its jobs did. Scripts and
CI need better, so :func:`run` (called by ``python -m csp_ablate``):

* reads ``backbone=<name>`` as ``model=<name>`` (:data:`ALIASES`: the backbone is the ``model``
  group, also under the detector); giving both with different values is an error, exit 2;
* refuses a command line that overrides one key twice (``gamma=0.3 gamma=0.4``) or gives an
  empty ``hydra.run.dir=`` / ``hydra.sweep.dir=`` (the run would write into the current dir);
* turns Hydra's composition errors into one paragraph (unknown key with the closest valid key,
  unknown group option with the options), exit 2; ``HYDRA_FULL_ERROR=1`` keeps Hydra's output;
* after a multirun, prints the jobs that failed and where their records are, and exits 1 when a
  job or the report failed (2 when every failure was a bad config);
* Ctrl-C: one line, exit 130, no traceback.

Imports only Hydra/OmegaConf: ``--help`` stays fast.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from csp_ablate.errors import ConfigError

PROG = "csp_ablate"
#: Hydra's multirun result (lists of JobReturn), captured from the call that ran it.
_RESULTS: list[Any] = []


def full_error() -> bool:
    """``HYDRA_FULL_ERROR=1``: the user asked for Hydra's full output and tracebacks."""
    return os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")


def error_exit(message: str, code: int = 2) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


# ---- the command line before Hydra sees it ------------------------------------------------------
#: Alias -> config group. ``model`` is the group's name (conf/model/); ``backbone`` is its alias,
#: the word the paper and the detector (backbone -> neck -> head) use for the same choice.
ALIASES: dict[str, str] = {"backbone": "model"}


def resolve_aliases(argv: Sequence[str]) -> list[str]:
    """``argv`` with each alias override (``backbone=peleenet``, ``backbone=a,b``) rewritten to
    its group (``model=...``). The alias and its group with the same value collapse into one;
    with different values, or an alias given twice, :class:`ConfigError`."""
    out: list[str] = []
    given: dict[str, tuple[str, str]] = {}  # group -> (first override text, its value)
    for arg in argv:
        key, eq, value = arg.partition("=")
        group = ALIASES.get(key, key) if eq else None
        if group is None or (key not in ALIASES and group not in ALIASES.values()):
            out.append(arg)
            continue
        if group in given:
            first, first_value = given[group]
            if key == group and first.startswith(f"{group}="):
                out.append(arg)  # model=a model=b: precheck names the duplicate
                continue
            if first_value != value:
                raise ConfigError(
                    f"Conflicting choices for the model: {first} and {arg} ('{key}' and '{first.partition('=')[0]}' "
                    f"are the same choice: {', '.join(f'{a}= is an alias of {g}=' for a, g in ALIASES.items())}). "
                    f"Give one of them."
                )
            continue  # the same value twice: one choice
        given[group] = (arg, value)
        out.append(f"{group}={value}")
    return out


def precheck(argv: Sequence[str]) -> None:
    """Raise :class:`ConfigError` for a key overridden twice or an empty run/sweep dir."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        args, _ = get_args_parser().parse_known_args(list(argv))
        overrides = OverridesParser.create().parse_overrides(list(args.overrides or []))
    except BaseException:  # noqa: BLE001  (Hydra reports its own parse errors, concisely)
        return
    seen: dict[str, str] = {}
    for override in overrides:
        key = override.get_key_element()
        text = override.input_line or key
        if key in seen:
            raise ConfigError(
                f"Duplicated override of '{key}': {seen[key]} and {text}. Give each key once "
                f"(a multirun lists its values in one override: {key}=a,b)."
            )
        seen[key] = text
        if key.lstrip("+~") in ("hydra.run.dir", "hydra.sweep.dir") and not str(override.value() or "").strip():
            raise ConfigError.bad_value(
                key, override.value(), "a directory path, e.g. hydra.run.dir=results/runs/mine",
                "An empty dir makes the run write into the current directory (the repository root).",
            )


# ---- Hydra's own errors -------------------------------------------------------------------------
def concise_hydra_error(ex: BaseException) -> str | None:
    """One paragraph for a composition error Hydra would print at length; None for others."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if isinstance(ex, MissingConfigException):
        found = re.search(r"Could not (?:find|load) '([^']+)'", str(ex))
        group, _, option = (found.group(1) if found else "?/?").rpartition("/")
        options = list(ex.options or [])
        close = difflib.get_close_matches(option, options, n=1)
        hint = f" Did you mean {group}={close[0]}?" if close else ""
        return (f"Unknown option '{option}' for '{group}'. Allowed: {', '.join(options)}.{hint}"
                if options else str(ex).splitlines()[0])
    if isinstance(ex, OverrideParseException):
        return f"Cannot parse the override: {str(ex).splitlines()[0]} (see `python -m csp_ablate --help`)."
    if isinstance(ex, ConfigCompositionException):
        cause = ex.__cause__
        key = getattr(cause, "full_key", None)
        parent = getattr(cause, "parent_node", None)
        if key and "Could not override" in str(ex):
            leaf = str(key).rsplit(".", 1)[-1]
            valid = [str(k) for k in parent.keys() if k != "hydra"] if hasattr(parent, "keys") else []
            close = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.6)
            prefix = str(key)[: -len(leaf)]
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
            allowed = f" Valid keys here: {', '.join(valid)}." if valid else ""
            return (f"Unknown key '{key}'.{hint}{allowed} (To add a new key on purpose: +{key}=...)")
        lines = [ln for ln in str(ex).splitlines() if ln.strip()][:3]
        if cause is not None:
            lines.append(str(cause).splitlines()[0])
        return " ".join(lines)
    return None


def _install_concise_errors() -> None:
    """Wrap Hydra's ``run_and_report`` (prints errors, exits 1): concise errors, exit 2; and keep
    the multirun's job results for the exit code. ``HYDRA_FULL_ERROR=1``: Hydra's behaviour."""
    import hydra._internal.hydra as hydra_mod
    import hydra._internal.utils as utils

    original = getattr(utils.run_and_report, "__wrapped_original__", utils.run_and_report)

    def run_and_report(func: Callable[[], Any]) -> Any:
        try:
            result = func()
        except Exception as ex:  # noqa: BLE001
            message = None if full_error() else concise_hydra_error(ex)
            if message is None:
                def reraise(err: Exception = ex) -> Any:  # Hydra's own full report of it
                    raise err
                return original(reraise)
            error_exit(message, 2)
        if _is_multirun_result(result):
            _RESULTS.append(result)
        return result

    run_and_report.__wrapped_original__ = original  # type: ignore[attr-defined]
    utils.run_and_report = run_and_report
    hydra_mod.run_and_report = run_and_report


def _is_multirun_result(result: Any) -> bool:
    from hydra.core.utils import JobReturn

    return isinstance(result, list) and all(isinstance(b, (list, tuple)) for b in result) and any(
        isinstance(j, JobReturn) for b in result for j in b)


# ---- after a multirun ---------------------------------------------------------------------------
def job_outcomes(results: list[Any]) -> list[dict[str, Any]]:
    """One dict per job: num, status (completed/skipped/failed), record, error."""
    from hydra.core.utils import JobStatus

    out = []
    for batch in results:
        for ret in batch:
            try:
                num = ret.hydra_cfg.hydra.job.num
            except AttributeError:
                num = None
            if ret.status == JobStatus.FAILED:
                err = ret._return_value
                out.append({"num": num, "status": "failed", "record": None, "config_error": False,
                            "error": f"{type(err).__name__}: {err}", "dir": ret.working_dir})
                continue
            value = ret.return_value
            item = dict(value) if isinstance(value, dict) else {"status": "completed"}
            item.setdefault("num", num)
            out.append(item)
    return out


def multirun_exit_code(outcomes: list[dict[str, Any]], report_failed: bool) -> int:
    """Print the failed jobs; 0 all fine, 2 when every job was refused as a bad config (nothing
    ran), else 1."""
    failed = [o for o in outcomes if o.get("status") == "failed"]
    for o in failed:
        where = o.get("record") or "no record could be written"
        print(f"[{PROG}] job {o.get('num')} failed: {str(o.get('error'))[:300]} | record: {where}",
              file=sys.stderr, flush=True)
    if report_failed:
        print(f"[{PROG}] the sweep's report failed (see the log above)", file=sys.stderr, flush=True)
    if not failed and not report_failed:
        return 0
    n_ok = sum(o.get("status") in ("completed", "skipped") for o in outcomes)
    print(f"[{PROG}] multirun: {len(failed)} of {len(outcomes)} job(s) failed, {n_ok} completed or skipped"
          f"{'; report failed' if report_failed else ''}: exit non-zero", file=sys.stderr, flush=True)
    nothing_ran = len(failed) == len(outcomes) and all(o.get("config_error") for o in failed)
    return 2 if nothing_ran and not report_failed else 1


def run(hydra_main: Callable[[], Any], argv: Sequence[str] | None = None) -> None:
    """Run the Hydra entry ``hydra_main`` as ``python -m csp_ablate`` does (see module docstring)."""
    from csp_ablate import callbacks

    from_sys = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        argv = resolve_aliases(argv)  # every rank: a relaunched rank sees the same command
        if from_sys:
            sys.argv[1:] = argv  # Hydra reads sys.argv
        if callbacks._is_rank_zero():  # a DDP rank > 0 runs the command its rank 0 already checked
            precheck(argv)
    except ConfigError as err:
        error_exit(str(err), 2)
    _install_concise_errors()
    _RESULTS.clear()
    try:
        hydra_main()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (Ctrl-C); finished records are kept, rerun the same command to "
              "resume.", file=sys.stderr, flush=True)
        sys.exit(130)
    except BrokenPipeError:  # `--help | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(0)
    if _RESULTS:
        code = multirun_exit_code(job_outcomes(_RESULTS[-1]), callbacks.REPORT_FAILED.get("failed", False))
        if code:
            sys.exit(code)
