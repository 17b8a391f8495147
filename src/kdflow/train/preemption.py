"""Stop requests: a signal asks the trainer to save its state at the next step and stop.

SLURM sends a signal some time before a job's time limit (``sbatch --signal=URG@600``), and
SIGTERM when a job is cancelled, preempted or reaches the limit (SIGKILL follows ``KillWait``
seconds later). The trainer cannot save from inside a signal handler (a step may be half done),
so the handler only records the request; the training loop checks it between steps, and under
DDP the ranks agree (one collective per step), so every rank stops after the same step. The same
collective carries each rank's "a loss was not finite" flag (see kdflow.train.trainer): a NaN seen
by one rank stops every rank at the same step, rather than leaving the others waiting for it.

Why SIGURG by default: without ``B:``, ``--signal`` reaches every process of the job's steps, which
under Snakemake includes the in-job Snakemake and torchrun; SIGURG is ignored by any process that
does not handle it, whereas SIGUSR1 would terminate them. SIGUSR1 and SIGUSR2 are handled too, for
hand-written batch scripts that forward them.
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

from kdflow.train import distributed

STOP_SIGNALS = (signal.SIGTERM, signal.SIGURG, signal.SIGUSR1, signal.SIGUSR2)


class Interrupted(RuntimeError):
    """Training stopped on a signal after saving its state; re-running the job resumes it."""


class StopRequests:
    """Context manager: while active, the signals in ``STOP_SIGNALS`` set a flag instead of their
    default action (the previous handlers come back on exit). Outside the main thread, where
    Python cannot install handlers, it records nothing."""

    def __init__(self, world_size: int = 1):
        self.world_size = world_size
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._group = None

    def _record(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._record)
        if self.world_size > 1 and dist.is_initialized() and dist.get_backend() != "gloo":
            # the ranks agree over a CPU (gloo) group: no CUDA synchronisation per step
            self._group = dist.new_group(backend="gloo", timeout=distributed.timeout())
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def requested(self) -> bool:
        """True on every rank as soon as any rank received a stop signal (a collective under DDP:
        every rank calls it at the same steps)."""
        return self.exchange()[0]

    def exchange(self, nonfinite: bool = False) -> tuple[bool, list[int]]:
        """``(stop requested on any rank, the ranks that passed nonfinite=True)``, the same on every
        rank: one small collective under DDP, which every rank calls at the same steps."""
        local = self.signal_name is not None
        if self.world_size == 1 or not dist.is_initialized():
            return local, [0] if nonfinite else []
        # [stop, rank 0 saw a non-finite loss, rank 1 ..., ...]: each rank sets its own slot
        flags = torch.zeros(1 + self.world_size, dtype=torch.int32)
        flags[0] = int(local)
        flags[1 + dist.get_rank()] = int(nonfinite)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flags[0]), [rank for rank, seen in enumerate(flags[1:].tolist()) if seen]
