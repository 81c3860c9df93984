"""Running a grid's unfinished runs as cluster jobs (submitit), one job per run.

``spard bench CONFIG --launcher slurm`` does the alignment, probe and start-model stages where it is
started, then submits every unfinished run as its own job and waits for them; each job is exactly the
inline bench's ``execute_run`` for that run (the same keys, the same stale and partial-run rules, the
same files), so a grid can move between a laptop, a workstation and a cluster and resume anywhere.
A job that fails leaves its run unfinished for the next ``spard bench``. ``--launcher local`` runs the
jobs as local processes through submitit's ``LocalExecutor`` (what the tests use).

submitit keeps its own job files (the pickled job call, logs) under ``<output_dir>/submitit/``; spard's
results stay JSON. Options go to ``executor.update_parameters`` (``--launcher-option
slurm_partition=gpu --launcher-option gpus_per_node=1 --launcher-option timeout_min=120``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LAUNCHERS = ("inline", "local", "slurm")


def make_executor(kind: str, folder: Path, options: dict[str, Any]) -> Any:
    """A submitit executor: ``local`` (processes on this machine) or ``slurm``."""
    try:
        import submitit
    except ImportError:
        raise ValueError(f"--launcher {kind} needs submitit: pip install 'spard[cluster]'") from None
    if kind == "local":
        executor = submitit.LocalExecutor(folder=str(folder))
    elif kind == "slurm":
        executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    else:
        raise ValueError(f"unknown launcher {kind!r}; choose from {', '.join(LAUNCHERS)}")
    executor.update_parameters(**{"timeout_min": 24 * 60, **options})
    return executor


def run_job(run: Any, run_dir: str, cfg: Any, plugins: Sequence[str], paths: Sequence[str] = ()) -> str:
    """One job: load the plugins the grid was started with (from the submitter's import paths as well as
    the job's own), then the inline bench's ``execute_run``."""
    from spard.bench.runner import execute_run
    from spard.registry import load_plugins

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.path.extend(p for p in paths if p not in sys.path)
    load_plugins(plugins)
    execute_run(run, Path(run_dir), cfg, progress=False)
    return run.name


def launch(pending: Sequence[tuple[Any, Path]], cfg: Any, kind: str, options: dict[str, Any] | None = None) -> dict[str, str]:
    """Submit one job per ``(run, run_dir)`` and wait for all; returns ``{run name: error}`` for the failed ones."""
    from spard.registry import LOADED_PLUGINS

    if not pending:
        return {}
    executor = make_executor(kind, Path(cfg.output_dir) / "submitit", dict(options or {}))
    jobs = [(run, executor.submit(run_job, run, str(run_dir), cfg, list(LOADED_PLUGINS), list(sys.path)))
            for run, run_dir in pending]
    logger.info("submitted %d runs as %s jobs (%s)", len(jobs), kind, ", ".join(str(job.job_id) for _, job in jobs))
    failed = {}
    for run, job in jobs:
        try:
            job.result()
        except Exception as exc:  # a failed job leaves its run unfinished for the next `spard bench`
            failed[run.name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
            logger.error("%s: job %s failed (%s); it stays unfinished", run.name, job.job_id, failed[run.name])
    return failed
