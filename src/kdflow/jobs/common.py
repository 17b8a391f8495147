"""Helpers shared by job entry points."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path


def set_threads(threads: int | None) -> None:
    """The rule's ``threads`` reach torch (intra-op) so jobs sharing a node do not oversubscribe."""
    if not threads:
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        import torch
    except ImportError:  # the report environment has no torch and needs none
        return
    torch.set_num_threads(int(threads))


def metrics_record(task: str, dataset: str | None, run: str, seed: int | None, metrics: list[dict],
                   **extra) -> dict:
    """The one shape every ``metrics.json`` has: tables need no per-task code."""
    return {"task": task, "dataset": dataset, "run": run, "seed": seed, "metrics": metrics, **extra}


@contextlib.contextmanager
def job_output(log_path: str | None):
    """Send this process's stdout and stderr (tqdm, warnings, C libraries) to the rule's log file."""
    if not log_path:
        yield
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a", buffering=1, encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def script_main(globals_: dict, from_snakemake, from_cli, run) -> None:
    """Entry point shared by every workflow script: under Snakemake read the ``snakemake`` object
    and log to the rule's log file; by hand parse the command line and print to the terminal."""
    smk = globals_.get("snakemake")
    if smk is not None:
        with job_output(smk.log[0] if smk.log else None):
            set_threads(smk.threads)
            run(from_snakemake(smk))
    else:
        args = from_cli()
        set_threads(getattr(args, "threads", None))
        run(args)
