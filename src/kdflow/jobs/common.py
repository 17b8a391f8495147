"""Helpers shared by job entry points (the workflow scripts)."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from pathlib import Path

from kdflow.train.launch import set_threads


def metrics_record(task: str, dataset: str | None, run: str, seed: int | None, metrics: list[dict],
                   **extra) -> dict:
    """The one shape every ``metrics.json`` has: tables need no per-task code."""
    return {"task": task, "dataset": dataset, "run": run, "seed": seed, "metrics": metrics, **extra}


@contextlib.contextmanager
def job_output(log_path: str | None):
    """Send this process's stdout and stderr (tqdm, warnings, C libraries) to the rule's log file.

    A failure's traceback is written to the log too: the interpreter prints it only after the
    descriptors are restored, i.e. to Snakemake's terminal or the SLURM job log, while the rule's
    log (the file Snakemake tells the user to read) would otherwise stay without it."""
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
        except BaseException as exc:
            _log_failure(log, exc)
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _log_failure(log, exc: BaseException) -> None:
    """The failure's report, written to the log file object itself (``sys.stderr`` may not be file
    descriptor 2, e.g. under a test runner's capture), after what the job printed before it."""
    sys.stdout.flush()
    sys.stderr.flush()
    if isinstance(exc, SystemExit):  # Python prints an exit's message (if any), never its traceback
        if exc.code is not None and not isinstance(exc.code, int):
            log.write(f"{exc.code}\n")
    else:
        traceback.print_exception(exc, file=log)
    log.flush()


def config_of(smk) -> dict:
    """A job's validated config under Snakemake: the workflow's own (the same files and --config
    overrides). Jobs take their full config slices from it, execution keys included; the rule's
    ``params`` carry only the identity slices, as re-run triggers."""
    from kdflow.config import validate_config

    return validate_config(smk.config, source="the workflow's config")


def add_gpus_option(parser) -> None:
    """``--gpus N`` for the scripts that train: N > 1 runs N DDP processes on this node."""
    parser.add_argument("--gpus", type=int, default=1, help="N > 1: N DDP processes on this node (torchrun)")


def script_main(globals_: dict, from_snakemake, from_cli, run, multi_gpu: bool = False) -> None:
    """Entry point shared by every workflow script: under Snakemake read the ``snakemake`` object
    and log to the rule's log file; by hand parse the command line and print to the terminal.

    A job given N > 1 GPUs (the rule's ``gpu`` resource, ``--gpus`` by hand) runs ``run(args)`` in
    N DDP processes (kdflow.train.launch) when the script trains (``multi_gpu``), and is refused
    otherwise: one process would silently leave N - 1 GPUs idle."""
    script = globals_["__file__"]  # under Snakemake the original path, not its temporary copy
    smk = globals_.get("snakemake")
    if smk is not None:
        with job_output(smk.log[0] if smk.log else None):
            set_threads(smk.threads)
            _run_on_gpus(script, run, from_snakemake(smk), smk.resources.get("gpu", 0), smk.threads,
                         multi_gpu, f"rule {smk.rule}")
    else:
        args = from_cli()
        set_threads(getattr(args, "threads", None))
        _run_on_gpus(script, run, args, getattr(args, "gpus", 0), getattr(args, "threads", None), multi_gpu,
                     Path(script).name)


def _run_on_gpus(script, run, args, gpus, threads, multi_gpu: bool, what: str) -> None:
    gpus = int(gpus or 0)
    if gpus <= 1:
        run(args)
        return
    if not multi_gpu:
        raise ValueError(f"{what} runs in one process and uses one GPU; it was given gpu={gpus}. "
                         "Set its gpu resource to 1 (set-resources in the profile)")
    from kdflow.train.launch import launch

    launch(script, args, gpus, threads)
