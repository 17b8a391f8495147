"""The one generic trainer.

It runs any ``Method`` (kdflow.distill) on a student: one optimizer (SGD or AdamW, optionally
without weight decay on norms and biases, optionally with gradient-norm clipping) over the
student's and the method's own trainable parameters, per-step learning rate from the schedule
(evaluated at the fractional nominal epoch, so methods that count a pass as several epochs see
the same schedule as plain training), AMP and channels_last on CUDA, DDP under torchrun, a
progress bar, one ``log.csv`` row per pass, and a resumable state saved atomically at the end of
every pass and, mid-pass, when a stop signal arrives (SLURM's pre-timeout signal, SIGTERM on
cancellation or preemption; see kdflow.train.preemption). A killed or stopped job re-run continues
from its last saved step and ends with the same weights as an uninterrupted run: every pass
re-seeds its randomness from (seed, pass), and a mid-pass state carries the generator's state.

Under DDP every rank evaluates (kdflow.train.evaluate shards the images and sums the counts), so
every rank's rows are the same; a method's own trainable modules (``Method.trainable_modules``)
are kept identical on every rank without the method knowing about DDP: they start from rank 0's
values and their gradients are averaged over the ranks after every backward, as DDP does for the
student. A non-finite loss stops every rank at the same step (read one step late, see LossWatch).
"""

from __future__ import annotations

import csv
import io
import math
import os
import pickle
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from kdflow.distill.base import Method, pass_seed
from kdflow.io import atomic_path, write_text
from kdflow.train import distributed
from kdflow.train.preemption import Interrupted, StopRequests

STATE_FILE = "last.pt"
PREVIOUS_STATE_FILE = "last.pt.prev"  # the state before the last save: used if last.pt is unreadable


class StateMismatch(RuntimeError):
    pass


class OutOfMemory(RuntimeError):
    """A training step ran out of device (or host) memory; the message says what to lower."""


def discard_state(state_dir: str | Path) -> None:
    """Called by a job once its outputs are written: the resumable state has served its purpose
    (it holds the optimizer's moments too, about twice the size of the weights)."""
    for path in (Path(state_dir) / STATE_FILE, Path(state_dir) / PREVIOUS_STATE_FILE):
        if path.exists():
            path.unlink()


def exempt_from_decay(name: str, param: nn.Parameter) -> bool:
    """timm's rule: norm weights, biases and other vectors or scalars are not weight-decayed."""
    return param.ndim <= 1 or name.endswith(".bias")


def param_groups(named_params: list[tuple[str, nn.Parameter]], optim: dict) -> list[dict]:
    """One group, every parameter decayed (the default, KDEP's recipe), or with
    ``decay_norm_and_bias`` false timm's two: [not decayed, decayed]. Both keep the order of
    ``named_params``: a saved optimizer state is matched to the parameters by position."""
    decay = optim["weight_decay"]
    if optim["decay_norm_and_bias"]:
        return [{"params": [p for _, p in named_params], "weight_decay": decay}]
    exempt = [exempt_from_decay(name, p) for name, p in named_params]
    return [{"params": [p for (_, p), e in zip(named_params, exempt) if e], "weight_decay": 0.0},
            {"params": [p for (_, p), e in zip(named_params, exempt) if not e], "weight_decay": decay}]


def build_optimizer(named_params: list[tuple[str, nn.Parameter]], optim: dict) -> torch.optim.Optimizer:
    """The optimizer of a training run over ``named_params`` (names decide the weight-decay groups)."""
    groups = param_groups(named_params, optim)
    if optim["name"] == "sgd":
        return torch.optim.SGD(groups, lr=optim["lr"], momentum=optim["momentum"],
                               nesterov=optim["nesterov"], weight_decay=optim["weight_decay"])
    if optim["name"] == "adamw":
        return torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]), eps=optim["eps"],
                                 weight_decay=optim["weight_decay"])
    raise ValueError(f"unknown optimizer {optim['name']!r}")


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    """Scales the gradients of every parameter the optimizer steps so that their total norm is at
    most ``max_norm``; returns the norm before clipping, as a tensor (no host-device sync)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return nn.utils.clip_grad_norm_(params, max_norm)


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """BatchNorm -> SyncBatchNorm with timm's converter: timm's norm+activation layers
    (BatchNormAct2d: EfficientNet, MobileNetV2) become SyncBatchNormAct with their activation, and
    with it kdflow's feature tap (a PreActTap placed as that activation); PyTorch's converter
    would replace them by a plain SyncBatchNorm, dropping both."""
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(model)


def lr_at(epoch: float, base_lr: float, schedule: dict, total_epochs: int) -> float:
    """Learning rate at a fractional nominal epoch: a linear warm-up from 0, then the schedule."""
    warmup = schedule["warmup_epochs"]
    if warmup > 0 and epoch < warmup:
        return base_lr * (epoch + 1e-12) / warmup
    name = schedule["name"]
    if name == "constant":
        return base_lr
    if name == "step":  # KDEP / robustness: x gamma every step_epochs (whole epochs)
        return base_lr * schedule["gamma"] ** int(math.floor(epoch + 1e-9) // schedule["step_epochs"])
    if name == "multistep":  # detectron2's steps: x gamma at each milestone passed
        return base_lr * schedule["gamma"] ** sum(epoch + 1e-9 >= m for m in schedule["milestones"])
    if name == "cosine":  # from base_lr at the warm-up's end down to min_lr at the last epoch
        span = max(total_epochs - warmup, 1e-12)
        progress = min(max(epoch - warmup, 0) / span, 1.0)
        floor = schedule["min_lr"]
        return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {name!r}")


def _channels_last(batch: dict) -> dict:
    """Image batches (4-d tensors) in channels_last; other entries (a detection batch's lists of
    images and targets) as they are."""
    return {k: v.contiguous(memory_format=torch.channels_last) if torch.is_tensor(v) and v.dim() == 4 else v
            for k, v in batch.items()}


class LossWatch:
    """Whether a step's loss was finite, read one step late so that checking costs no host-device
    synchronisation: on CUDA the loss is copied to pinned host memory behind an event, and reading
    it during the next step waits for that copy only, not for the work queued after it."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._host = torch.zeros((), dtype=torch.float32, pin_memory=self.cuda)
        self._event = torch.cuda.Event() if self.cuda else None
        self._step: int | None = None

    def swap(self, loss: torch.Tensor, step: int) -> tuple[int, float] | None:
        """Queue ``step``'s loss; returns the previously queued one (see ``take``)."""
        previous = self.take()  # first: the host buffer is free once its copy has completed
        self._host.copy_(loss.detach().float().reshape(()), non_blocking=self.cuda)
        if self.cuda:
            self._event.record()
        self._step = step
        return previous

    def take(self) -> tuple[int, float] | None:
        """``(step, loss)`` of the queued step, or None when none is queued."""
        if self._step is None:
            return None
        if self.cuda:
            self._event.synchronize()
        queued, self._step = (self._step, float(self._host)), None
        return queued


class Trainer:
    def __init__(self, model: nn.Module, method: Method, training: dict, run_dir: str | Path,
                 state_dir: str | Path, config_hash: str, evaluate: Callable[[nn.Module], dict] | None = None,
                 desc: str = "train"):
        self.model = model
        self.method = method
        self.training = training
        self.run_dir = Path(run_dir)
        self.state_path = Path(state_dir) / STATE_FILE
        self.config_hash = config_hash
        self.evaluate = evaluate
        self.desc = desc
        self.ctx = method.ctx
        self.device = self.ctx.device
        self.rows: list[dict] = []
        self.interruptions: list[dict] = []  # stop signals this run saved on (kept in its provenance)
        self._synced_params: list[nn.Parameter] = []  # the method's, averaged over ranks (set by fit)
        self._batches = None  # the running pass's loader

    # --------------------------------------------------------------------------- setup
    def _prepare_model(self) -> nn.Module:
        model = self.model.to(self.device)
        cuda = self.device.type == "cuda"
        if cuda and self.training["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        if self.ctx.world_size > 1:
            if self.training["sync_bn"] and not cuda:
                raise ValueError(
                    f"[{self.desc}] training.sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU "
                    f"kernel); this {self.ctx.world_size}-process run is on {self.device.type}. Set sync_bn: "
                    "false, or use a model without BatchNorm")
            if self.training["sync_bn"]:
                model = convert_sync_bn(model)
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if cuda else None)
        if self.training.get("compile"):  # the wrapper trains; self.model (its weights) is saved
            model = torch.compile(model)
        return model

    def _trainable(self) -> dict[str, nn.Module]:
        return {"student": self.model, **self.method.trainable_modules()}

    def _named_params(self) -> list[tuple[str, nn.Parameter]]:
        """Trainable parameters of the student and the method's modules, each once, named
        ``<module>.<parameter>`` and in a fixed order (the student's first, then each module's in
        ``trainable_modules``' order): the order a saved optimizer state is loaded by."""
        named, seen = [], set()
        for module_name, module in self._trainable().items():
            for name, param in module.named_parameters():
                if param.requires_grad and id(param) not in seen:
                    seen.add(id(param))
                    named.append((f"{module_name}.{name}", param))
        return named

    # --------------------------------------------------------------------------- method modules under DDP
    def _method_params(self) -> list[nn.Parameter]:
        """Trainable parameters of the method's own modules (DDP keeps the student's in step)."""
        student = {id(p) for p in self.model.parameters()}
        unique = {id(p): p for m in self.method.trainable_modules().values() for p in m.parameters()
                  if p.requires_grad and id(p) not in student}
        return list(unique.values())

    def _broadcast_method_modules(self) -> None:
        """Every rank starts from rank 0's values (a method may initialise from a rank-local generator);
        once per run, so one collective per tensor is fine."""
        if self.ctx.world_size == 1:
            return
        for module in self.method.trainable_modules().values():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def _average_method_grads(self, params: list[nn.Parameter]) -> None:
        """Gradients of the method's modules averaged over the ranks, in one flat all-reduce per step
        (what DDP does for the student, so a method module learns as in one process on the global
        batch). A parameter without a gradient on this rank contributes zeros and keeps no gradient:
        like DDP for the student, this assumes every rank uses the same parameters."""
        if self.ctx.world_size == 1 or not params:
            return
        dtype = params[0].dtype
        for param in params[1:]:
            dtype = torch.promote_types(dtype, param.dtype)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
                          for p in params])
        dist.all_reduce(flat)
        flat /= self.ctx.world_size
        offset = 0
        for param in params:
            if param.grad is not None:
                param.grad.copy_(flat[offset:offset + param.numel()].view_as(param))
            offset += param.numel()

    def _broadcast_model_buffers(self) -> None:
        """Rank 0's BatchNorm statistics on every rank before evaluating: DDP broadcasts them at
        the start of each forward, but each rank then updates its own with its own batch. The
        evaluated model is then the saved one (rank 0's) on every rank."""
        if self.ctx.world_size == 1:
            return
        for buffer in self.model.buffers():
            dist.broadcast(buffer.data, src=0)

    def _out_of_memory(self, pass_index: int, exc: BaseException) -> "OutOfMemory":
        """What to lower, said in the config's terms (the device's message alone names neither)."""
        batch = self.training["batch_size"]
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        saved = f"; the last saved state ({self.state_path}) is kept" if self.state_path.is_file() else ""
        return OutOfMemory(
            f"[{self.desc}] out of {self.device.type} memory in pass {pass_index + 1} with training.batch_size "
            f"{batch} ({batch // self.ctx.world_size} per process over {self.ctx.world_size}): lower "
            f"training.batch_size (an identity key: the run restarts), or run on more GPUs{saved}. ({why})")

    # --------------------------------------------------------------------------- state
    def _read_state(self, path: Path) -> dict | None:
        """A state file's content; None if it is cut short or damaged (a copy interrupted, a file
        system that lost the end of a write). weights_only: tensors and plain containers, never
        arbitrary objects (a state file is read back from a shared results folder; unpickling one
        could run any code)."""
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise StateMismatch(f"{path} holds more than tensors and plain values, so it was not "
                                f"written by kdflow's trainer; refusing to unpickle it ({exc}). Delete it to "
                                "start over") from None
        except (RuntimeError, EOFError, OSError) as exc:
            why = (str(exc).splitlines() or [type(exc).__name__])[0]
            print(f"[{self.desc}] {path} is unreadable ({why})", flush=True)
            return None

    def _load_state(self, optimizer) -> dict | None:
        previous = self.state_path.with_name(PREVIOUS_STATE_FILE)
        state = self._read_state(self.state_path) if self.state_path.is_file() else None
        if state is None and previous.is_file():
            state = self._read_state(previous)
            if state is None:
                raise StateMismatch(f"both {self.state_path} and {previous} are unreadable; delete them to start over")
            print(f"[{self.desc}] resuming from the state before it, {previous}", flush=True)
        elif state is None and self.state_path.is_file():
            raise StateMismatch(f"{self.state_path} is unreadable and there is no earlier state; delete it to "
                                "start over")
        if state is None:
            return None
        if state["config_hash"] != self.config_hash:
            raise StateMismatch(
                f"{self.state_path} belongs to a run with a different config (hash "
                f"{state['config_hash'][:12]} vs {self.config_hash[:12]}); delete it to start over"
            )
        for name, module in self._trainable().items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        self.rows = state["rows"]
        self.interruptions = state.get("interruptions", [])
        return state

    def _save_state(self, optimizer, passes_done: int, within: dict | None = None) -> None:
        """``within``: a pass stopped part-way (its done steps, running sums and generator state)."""
        if self.ctx.rank != 0:
            return
        state = {
            "config_hash": self.config_hash,
            "passes_done": passes_done,
            "within": within,
            "modules": {name: m.state_dict() for name, m in self._trainable().items()},
            "optimizer": optimizer.state_dict(),
            "rows": self.rows,
            "interruptions": self.interruptions,
        }
        with atomic_path(self.state_path) as tmp:
            torch.save(state, tmp)
            if self.state_path.is_file():  # the new state is written: the old one becomes the previous
                os.replace(self.state_path, self.state_path.with_name(PREVIOUS_STATE_FILE))

    def _generator_state(self) -> dict:
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set_generator_state(self, state: dict) -> None:
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def _write_log(self) -> None:
        if self.ctx.rank != 0 or not self.rows:
            return
        fields = list(dict.fromkeys(k for row in self.rows for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.run_dir / "log.csv", buf.getvalue())

    # --------------------------------------------------------------------------- loop
    def fit(self) -> dict:
        passes = self.method.passes(self.training["epochs"])
        total_epochs = sum(passes)
        wrapped = self._prepare_model()
        optimizer = build_optimizer(self._named_params(), self.training["optim"])
        state = self._load_state(optimizer)  # (load_state_dict moves optimizer state to the params' device)
        self._broadcast_method_modules()
        self._synced_params = self._method_params()
        start, within = (state["passes_done"], state.get("within")) if state else (0, None)
        if state:
            where = f"step {within['step']} of pass {start + 1}" if within else f"pass {start}/{len(passes)}"
            print(f"[{self.desc}] resuming after {where} from {self.state_path}", flush=True)
        use_amp = self.training["amp"] and self.device.type == "cuda"
        with StopRequests(self.ctx.world_size) as stop:
            for p in range(start, len(passes)):
                epoch0 = float(sum(passes[:p]))
                torch.manual_seed(pass_seed(self.ctx.seed, p, stream=2))
                try:
                    row = self._run_pass(wrapped, optimizer, p, epoch0, passes[p], total_epochs, use_amp,
                                         stop, within if p == start else None)
                except (torch.OutOfMemoryError, MemoryError) as exc:
                    raise self._out_of_memory(p, exc) from exc
                is_last = p == len(passes) - 1
                every = self.training["eval_every"]
                if self.evaluate is not None and (is_last or (every and round(epoch0 + passes[p]) % every == 0)):
                    # on every rank: the evaluation is a collective under DDP, and every rank's rows agree
                    self._broadcast_model_buffers()
                    self.model.eval()
                    row.update(self.evaluate(self.model))
                self.rows.append(row)
                self._save_state(optimizer, p + 1)  # state first: the log never runs ahead of it
                self._write_log()
                distributed.barrier()
                if p + 1 < len(passes) and stop.requested():
                    self._record_stop(stop, p + 1, 0)
                    self._save_state(optimizer, p + 1)
                    raise self._interrupted(stop, f"at the end of pass {p + 1}/{len(passes)}")
        return {"rows": self.rows, "epochs": total_epochs, "passes": len(passes), "interruptions": self.interruptions}

    def _run_pass(self, wrapped, optimizer, p, epoch0, span, total_epochs, use_amp, stop: StopRequests,
                  within: dict | None) -> dict:
        from tqdm import tqdm

        self.model.train()
        for module in self.method.trainable_modules().values():
            module.train()
        batches = self.method.loader(p)
        self._batches = batches  # a non-finite loss names its batch's images
        steps = len(batches)
        base_lr = self.training["optim"]["lr"]
        max_norm = self.training["optim"]["clip_grad_norm"]
        sums: dict[str, torch.Tensor | float] = {}
        seen, seconds, first = 0, 0.0, 0
        if within:  # a pass stopped part-way: skip its done steps, restore its generator and sums
            first, seconds = within["step"], within["seconds"]
            batches.skip(first)
            self._set_generator_state(within["generator"])
            if self.ctx.rank == 0:  # the saved sums are already over all ranks
                seen, sums = within["seen"], dict(within["sums"])
        watch = LossWatch(self.device)
        started = time.time()
        bar = tqdm(total=steps, initial=first, desc=f"{self.desc} epoch {epoch0 + span:g}/{total_epochs}",
                   disable=self.ctx.rank != 0, mininterval=5, leave=False)
        for i, batch in enumerate(batches, start=first):
            lr = lr_at(epoch0 + span * i / max(steps, 1), base_lr, self.training["schedule"], total_epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = self.method.prepare(batch)
            if self.device.type == "cuda" and self.training["channels_last"]:
                batch = _channels_last(batch)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, logs = self.method.loss(wrapped, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._average_method_grads(self._synced_params)
            if max_norm is not None:  # on averaged gradients: the same norm on every rank
                logs = {**logs, "grad_norm": clip_gradients(optimizer, max_norm)}
            optimizer.step()
            n = self.method.batch_size(batch)
            seen += n
            for key, value in {"loss": loss.detach(), **logs}.items():
                # kept as tensors: no host-device sync per step on CUDA. Weighted by the batch like
                # the loss, grad_norm's row value is its mean over the steps (batches of one size)
                sums[key] = sums.get(key, 0.0) + (value.detach().float() if torch.is_tensor(value) else value) * n
            bar.update(1)
            # the one collective per step: stop requests, and the previous step's loss check
            stop_requested = self._agree(stop, watch.swap(loss, i), p, steps)
            if i + 1 < steps and stop_requested:
                bar.close()
                self._agree(stop, watch.take(), p, steps)  # this step's loss, before its weights are saved
                seen, sums = self._over_ranks(seen, sums)
                self._stop(optimizer, p, i + 1, steps, stop, {
                    "step": i + 1, "seen": seen, "sums": sums, "seconds": seconds + time.time() - started,
                    "generator": self._generator_state()})
        bar.close()
        self._agree(stop, watch.take(), p, steps)  # the pass's last step
        seconds += time.time() - started
        seen, sums = self._over_ranks(seen, sums)
        row = {"epoch": epoch0 + span, "pass": p + 1,
               "lr": lr_at(epoch0, base_lr, self.training["schedule"], total_epochs)}
        row.update({k: round(v / max(seen, 1), 6) for k, v in sums.items()})
        row.update({"images": seen, "seconds": round(seconds, 3), "images_per_s": round(seen / max(seconds, 1e-9), 2)})
        if self.ctx.rank == 0:
            print(f"[{self.desc}] " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        return row

    def _agree(self, stop: StopRequests, checked: tuple[int, float] | None, p: int, steps: int) -> bool:
        """Whether any rank was asked to stop; raises FloatingPointError on every rank together when
        ``checked`` (this rank's ``(step, loss)``, the same step on every rank) is not finite on any
        rank, before anything trained on that loss is saved."""
        bad = checked is not None and not math.isfinite(checked[1])
        requested, ranks = stop.exchange(nonfinite=bad)
        if ranks:
            raise FloatingPointError(self._nonfinite_message(checked, ranks, p, steps))
        return requested

    def _nonfinite_message(self, checked: tuple[int, float] | None, ranks: list[int], p: int, steps: int) -> str:
        # every rank checks the same step (they run in lockstep), so ``checked`` is set wherever a rank's is
        step, value = checked if checked is not None else (None, math.nan)
        where = f"in step {step + 1 if step is not None else '?'}/{steps} of pass {p + 1}"
        kept = self._kept_state()
        if self.ctx.world_size == 1:
            return (f"[{self.desc}] non-finite loss {value} {where}; stopped before saving the weights trained on it"
                    f"{self._batch_images(step)}; {kept}")
        here = f" ({value} on this rank){self._batch_images(step)}" if not math.isfinite(value) else ""
        return (f"[{self.desc}] non-finite loss {where} on rank {', '.join(map(str, ranks))}{here}; every rank "
                f"stopped before saving the weights trained on it; {kept}")

    def _batch_images(self, step: int | None, shown: int = 16) -> str:
        """The step's images on this rank, as the loader says (a corrupt or extreme image is the
        usual cause of a non-finite loss that a lower learning rate does not explain)."""
        paths = getattr(self._batches, "paths", None)
        images = paths(step) if paths is not None and step is not None else []
        if not images:
            return ""
        more = f" and {len(images) - shown} more" if len(images) > shown else ""
        return f"; the batch's images: {', '.join(images[:shown])}{more}"

    def _kept_state(self) -> str:
        if self.state_path.exists():
            return f"the last good state is kept in {self.state_path} (a re-run resumes from it)"
        return "no state was saved before it (a re-run starts over)"

    def _over_ranks(self, seen: int, sums: dict) -> tuple[int, dict[str, float]]:
        """Images and per-image loss sums of all ranks (the log shows the global batch's values)."""
        keys = list(sums)  # insertion order: loss first, then the method's terms (the same on every rank)
        values = [float(sums[k]) for k in keys] + [float(seen)]
        if self.ctx.world_size > 1:
            packed = torch.tensor(values, dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(packed)
            values = packed.tolist()
        return int(round(values[-1])), dict(zip(keys, values[:-1]))

    def _stop(self, optimizer, p: int, step: int, steps: int, stop: StopRequests, within: dict) -> None:
        self._record_stop(stop, p, step)
        self._save_state(optimizer, p, within)
        distributed.barrier()  # no rank leaves before the state is on disk
        raise self._interrupted(stop, f"after step {step}/{steps} of pass {p + 1}")

    def _record_stop(self, stop: StopRequests, passes_done: int, step: int) -> None:
        self.interruptions.append({"signal": stop.signal_name or "signal to another rank",
                                   "passes_done": passes_done, "step": step,
                                   "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def _interrupted(self, stop: StopRequests, where: str) -> Interrupted:
        by = stop.signal_name or "a signal to another rank"
        return Interrupted(f"[{self.desc}] stopped by {by} {where}; state saved to {self.state_path}. "
                           "Re-run the job to resume from there.")
