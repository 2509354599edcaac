"""Generic training helpers shared by every training script (MWCNN, ESRGAN, DeepFill).

Nothing here knows about a particular network. The pieces:

* :func:`run_training`: the one trainer skeleton. A script describes its run (:class:`RunSpec`)
  and builds its network's pieces (a :class:`Network`: model, optimizer, data, one step,
  validation); the skeleton does the rest the same way for every network: seeding and threads,
  resume, the weight average, the start line, the step loop, the best checkpoint, the resumable
  checkpoint and the history of resumed segments.
* :class:`RunLog`: timestamped lines appended to ``<run_dir>/train.log`` (and echoed through
  tqdm so they do not break the progress bar).
* :func:`save_checkpoint` / :func:`load_checkpoint`: atomic, resumable checkpoints holding the
  model, optimizer, scheduler, step, RNG states (torch, numpy Generator, python) and any extras.
* :class:`Schedule`: linear warm-up then cosine decay (a LambdaLR), over steps or a
  wall-clock budget, whichever runs out first.
* :class:`Every`: "has N seconds passed?" for time-based checkpointing.
* :func:`run_steps`: the step loop inside the skeleton (progress bar, steps/hour and loss
  windows, validation points kept out of the rate, periodic and final checkpoints, a clean stop
  on SIGTERM/SIGINT or after ``--max-minutes``).
* :class:`WeightAverage`: an exponential moving average of the weights (validated and shipped
  in place of the raw weights when a script offers ``--ema``).
* :func:`machine_summary`: CPU model, flags, threads, bf16 decision (from ``shared.ml.accel``).
* :func:`export_fp16_safetensors` / :func:`training_lineage` / :func:`git_commit`: shipping
  (the provenance schema itself is ``training.export.Provenance``).
* :func:`psnr`: the plain PSNR used for validation logging.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from shared.ml.accel import cpu_flags, cpu_model, describe_accelerator, use_bf16
from shared.ml.runtime import resolve_device

REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- threads / device


def configure_threads(threads: int) -> None:
    """Pin torch's intra- and inter-op pools (a background run must stay on its own core)."""
    torch.set_num_threads(max(1, threads))
    with contextlib.suppress(RuntimeError):  # already set once in this process: harmless
        torch.set_num_interop_threads(1)


def machine_summary(device: torch.device) -> dict[str, Any]:
    """What the training log and the provenance file record about the machine."""
    summary: dict[str, Any] = dict(describe_accelerator(device))
    summary["cpu_model"] = cpu_model()
    summary["cpu_count"] = os.cpu_count()
    summary["all_cpu_flags"] = " ".join(sorted(cpu_flags()))
    return summary


# --------------------------------------------------------------------------- logging


class RunLog:
    """Appends ``<UTC time> <message>`` lines to a log file and echoes them above tqdm bars."""

    def __init__(self, path: str | Path, echo: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.echo = echo

    def __call__(self, message: str) -> None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        line = f"{stamp} {message}"
        with self.path.open("a") as f:
            f.write(line + "\n")
        if self.echo:
            tqdm.write(line)

    def json(self, event: str, **fields: Any) -> None:
        """A machine-readable line: ``<time> <event> {json}`` (easy to grep and parse back)."""
        self(f"{event} {json.dumps(fields, sort_keys=True, default=str)}")


def progress_bar(total: int, initial: int = 0, desc: str = "train") -> tqdm:
    """A tqdm bar that also works when stdout is a log file (no ANSI clutter, slow refresh)."""
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=5.0,
                smoothing=0.05)


class Every:
    """``if every(): ...`` is true at most once per ``seconds`` (first call after the period)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last = time.monotonic()

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.seconds:
            self.last = now
            return True
        return False


class StopFlag:
    """Set by SIGTERM/SIGINT so the loop can checkpoint and exit cleanly."""

    def __init__(self) -> None:
        self.stop = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, _signum: int, _frame: Any) -> None:
        self.stop = True


class Schedule:
    """How far a run is through its schedule: by steps, or by wall-clock when ``hours`` runs
    out first, so a run on a slower or busier machine still decays its learning rate fully
    before its deadline. The time already trained (``elapsed_before``, kept in checkpoints)
    counts, so a resumed run keeps its deadline.
    """

    def __init__(self, total_steps: int, hours: float = 0.0) -> None:
        self.total_steps, self.hours = total_steps, hours
        self.elapsed_before = 0.0
        self._since = time.monotonic()

    def elapsed_s(self) -> float:
        return self.elapsed_before + time.monotonic() - self._since

    def fraction(self, step: int) -> float:
        by_steps = step / self.total_steps
        by_time = self.elapsed_s() / (self.hours * 3600) if self.hours > 0 else 0.0
        return min(1.0, max(by_steps, by_time))

    def done(self, step: int) -> bool:
        return self.fraction(step) >= 1.0

    def lr_scheduler(self, optimizer: torch.optim.Optimizer, warmup_steps: int = 0,
                     min_ratio: float = 0.01) -> torch.optim.lr_scheduler.LambdaLR:
        """:func:`cosine_factor` at the schedule's position; step it once per optimizer step."""
        total = self.total_steps

        def factor(step: int) -> float:
            return cosine_factor(round(self.fraction(step) * total), total, warmup_steps,
                                 min_ratio)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass(frozen=True)
class LoopSettings:
    """When the loop logs, validates, checkpoints and gives up; from each script's CLI.

    ``max_minutes`` ends this segment early (with a checkpoint; a speed probe, say) without
    touching the schedule, unlike the schedule's ``hours``. ``checkpoint_on_validation`` and
    ``validate_on_stop`` keep ESRGAN's rhythm (a resumable checkpoint after every validation,
    and a last validation when a signal stops the run), which predates ``ckpt_minutes``.
    """

    log_every: int
    val_every: int
    ckpt_minutes: float
    max_minutes: float | None = None
    checkpoint_on_validation: bool = False
    validate_on_stop: bool = False


def run_steps(
    settings: LoopSettings,
    schedule: Schedule,
    *,
    start_step: int,
    desc: str,
    log: RunLog,
    train_step: Callable[[int], Mapping[str, float]],
    current_lr: Callable[[], float],
    save_last: Callable[[int], None],
    validate: Callable[[int], Mapping[str, Any]] | None = None,
) -> tuple[int, bool]:
    """Run ``train_step`` until the schedule is done; return (the step reached, stopped by a
    signal).

    ``train_step(step)`` does the optimisation step after ``step`` steps and returns its
    losses, averaged per log window; ``validate(step)`` runs every ``val_every`` steps and at
    the end of the schedule (it keeps its own best checkpoint and returns the fields of the
    ``val`` log line, which the loop times and writes); ``save_last(step)`` writes the
    resumable checkpoint every ``ckpt_minutes`` and once more when the loop ends, whatever
    ended it.
    """
    stop = StopFlag()
    ckpt_timer = Every(settings.ckpt_minutes * 60)
    started = time.monotonic()
    window_start, window_steps = time.monotonic(), 0
    sums: dict[str, float] = {}
    step = start_step
    validated_at: int | None = None
    bar = progress_bar(schedule.total_steps, initial=step, desc=desc)
    while not schedule.done(step) and not stop.stop:
        for name, value in train_step(step).items():
            sums[name] = sums.get(name, 0.0) + float(value)
        step += 1
        window_steps += 1
        bar.update(1)
        if step % settings.log_every == 0:
            elapsed = time.monotonic() - window_start
            log.json("train", step=step, lr=current_lr(),
                     steps_per_hour=round(window_steps / elapsed * 3600),
                     **{name: total / window_steps for name, total in sums.items()})
            window_start, window_steps, sums = time.monotonic(), 0, {}
        if validate is not None and (step % settings.val_every == 0 or schedule.done(step)):
            window_start += _timed_validation(validate, step, log)  # kept out of steps/hour
            validated_at = step
        if ckpt_timer() or (validated_at == step and settings.checkpoint_on_validation):
            save_last(step)
        if settings.max_minutes and time.monotonic() - started > settings.max_minutes * 60:
            log(f"--max-minutes {settings.max_minutes} reached at step {step}")
            break
    bar.close()
    if (validate is not None and settings.validate_on_stop and stop.stop
            and validated_at != step):
        _timed_validation(validate, step, log)
    save_last(step)
    return step, stop.stop


def _timed_validation(validate: Callable[[int], Mapping[str, Any]], step: int,
                      log: RunLog) -> float:
    """Validate at ``step`` and write the ``val`` line; return the seconds it took."""
    t0 = time.monotonic()
    fields = validate(step)
    seconds = time.monotonic() - t0
    log.json("val", step=step, **fields, seconds=round(seconds, 1))
    return seconds


# --------------------------------------------------------------------------- the trainer skeleton


@dataclass(frozen=True)
class RunSpec:
    """What the skeleton needs to know about a run besides the network; from the CLI.

    ``best_key`` names the best score in checkpoints ("best_psnr" in MWCNN's and ESRGAN's,
    "best" in DeepFill's: runs written before the skeleton resume with their own key).
    ``best_weights_only`` writes the best weights as a bare state dict (ESRGAN's
    ``best_model.pth``, which ``load_rrdbnet`` and ``--init`` read) instead of a checkpoint;
    ``latest_is_best`` keeps the latest validated weights whatever their score (ESRGAN's GAN
    stage trades PSNR for realism, so a higher PSNR is no better there).
    """

    run_dir: Path
    args: argparse.Namespace  # recorded whole in the log, the checkpoints and the provenance
    desc: str  # progress-bar label
    loop: LoopSettings
    steps: int
    hours: float = 0.0
    seed: int = 0
    threads: int = 1
    resume: bool = False
    init: Path | None = None
    ema: float = 0.0
    best_key: str = "best"
    best_name: str = "best.pt"
    best_weights_only: bool = False
    latest_is_best: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, desc: str, loop: LoopSettings,
                  **options: Any) -> RunSpec:
        """The flags every trainer shares (``--ema`` is optional: 0 where a script has none)."""
        return cls(run_dir=args.run_dir, args=args, desc=desc, loop=loop, steps=args.steps,
                   hours=args.hours, seed=args.seed, threads=args.threads, resume=args.resume,
                   init=args.init, ema=getattr(args, "ema", 0.0), **options)


@dataclass
class RunContext:
    """What a network's pieces are built with; made by :func:`run_training` before them, so
    the seed is set before any weight is drawn."""

    device: torch.device
    log: RunLog
    schedule: Schedule
    np_rng: np.random.Generator  # every data draw; checkpointed, so a resume continues it
    last_path: Path  # the resumable checkpoint
    best_path: Path  # the validated weights (what export ships)


@dataclass(frozen=True)
class Prepared:
    """A network's data, loaded after any resume (so the restored generator draws it)."""

    data: Any  # a description of the training data, kept in checkpoints and provenance
    log: dict[str, Any] = field(default_factory=dict)  # more fields of the "start" line
    validates: bool = True  # False: no validation set (timing runs), so no best checkpoint


@dataclass(frozen=True)
class Validation:
    """One validation of the weights that would ship."""

    score: float  # what the best checkpoint maximises
    scores: Any  # kept with the best weights ("best_scores"); provenance's "validation"
    log: dict[str, Any]  # the fields of the "val" line (the skeleton adds step and best)


class Network(Protocol):
    """One network's part of a run; :func:`run_training` drives it.

    The optimizer and scheduler (None where the network sets its learning rate itself) are
    checkpointed and restored by the skeleton; anything else a resume needs (critics, a
    discriminator) goes through ``checkpoint_extra`` and ``load_checkpoint_extra``.
    """

    @property
    def model(self) -> nn.Module: ...

    @property
    def optimizer(self) -> torch.optim.Optimizer: ...

    @property
    def scheduler(self) -> Any: ...

    def describe(self) -> dict[str, Any]:
        """Fixed facts (``config``, a task) for the start line and every checkpoint."""
        ...

    def prepare(self) -> Prepared:
        """Load the training and validation data."""
        ...

    def train_step(self, step: int) -> Mapping[str, float]:
        """One optimisation step after ``step`` steps (batch, loss, optimizer, learning rate);
        its losses by name."""
        ...

    def current_lr(self) -> float: ...

    def validate(self, model: nn.Module) -> Validation:
        """Score ``model`` (the raw weights or their average) on the held-out set."""
        ...

    def checkpoint_extra(self) -> dict[str, Any]:
        """The network's own resumable state, stored in ``last.pt``'s extras."""
        ...

    def load_checkpoint_extra(self, extra: dict[str, Any]) -> None:
        """Restore ``checkpoint_extra``. Called before the skeleton reads its own fields, so a
        checkpoint of an older layout may be brought up to date in place."""
        ...


@dataclass(frozen=True)
class RunResult:
    step: int  # the step reached
    stopped: bool  # by a signal (the schedule not finished)
    best: float


def open_run(spec: RunSpec) -> RunContext:
    """Threads, seed, device, run folder and log: everything before the first weight is drawn."""
    configure_threads(spec.threads)
    torch.manual_seed(spec.seed)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(device=resolve_device("auto"), log=RunLog(spec.run_dir / "train.log"),
                      schedule=Schedule(spec.steps, spec.hours),
                      np_rng=np.random.default_rng(spec.seed),
                      last_path=spec.run_dir / "last.pt", best_path=spec.run_dir / spec.best_name)


def run_training(spec: RunSpec, build: Callable[[RunContext], Network]) -> RunResult:
    """Train the network that ``build`` makes, as ``spec`` says: the skeleton of every trainer."""
    context = open_run(spec)
    return _Run(spec, context, build(context)).train()


def _args_record(args: argparse.Namespace) -> dict[str, str]:
    """The arguments as strings: what checkpoints, history segments and provenance keep."""
    return {k: str(v) for k, v in vars(args).items()}


class _Run:
    """The state :func:`run_training` keeps for one run: progress, best score, history."""

    def __init__(self, spec: RunSpec, context: RunContext, network: Network) -> None:
        self.spec, self.ctx, self.net = spec, context, network
        self.step = 0
        self.best = -math.inf
        self.best_step: int | None = None
        self.best_scores: Any = None
        self.history: dict[str, Any] = {"init": str(spec.init) if spec.init else None,
                                        "segments": []}
        self.segment: dict[str, Any] = {}
        self.commit = git_commit()
        self.machine: dict[str, Any] = {}
        self.data: Any = None
        self.average: WeightAverage | None = None

    def train(self) -> RunResult:
        saved_average = self._resume()
        # After the resume: without a stored average it starts from the resumed weights.
        self.average = resumed_weight_average(self.net.model, self.spec.ema, saved_average)
        self.machine = machine_summary(self.ctx.device)
        prepared = self.net.prepare()
        self.data = prepared.data
        self.segment = {"start_step": self.step, "commit": self.commit,
                        "machine": self.machine["device"], "args": _args_record(self.spec.args)}
        self.history["segments"].append(self.segment)
        self.ctx.log.json("start", **self.net.describe(),
                          params=sum(p.numel() for p in self.net.model.parameters()),
                          commit=self.commit, machine=self.machine, args=vars(self.spec.args),
                          data=self.data, bf16=use_bf16(self.ctx.device), **prepared.log)
        self.net.model.train()
        step, stopped = run_steps(
            self.spec.loop, self.ctx.schedule, start_step=self.step, desc=self.spec.desc,
            log=self.ctx.log, train_step=self._train_step, current_lr=self.net.current_lr,
            save_last=self._save_last, validate=self._validate if prepared.validates else None)
        self.ctx.log.json("stop", step=step, best=self.best, reason="signal" if stopped else "done")
        return RunResult(step, stopped, self.best)

    def _resume(self) -> Mapping[str, Any] | None:
        """Continue from last.pt when asked; return the weight average it stored, if any."""
        last = self.ctx.last_path
        if not self.spec.resume:
            return None
        if not last.exists():
            self.ctx.log(f"--resume: no {last} yet, starting fresh")
            return None
        state = load_checkpoint(last, model=self.net.model, optimizer=self.net.optimizer,
                                scheduler=self.net.scheduler, np_rng=self.ctx.np_rng)
        extra = state["extra"]
        self.net.load_checkpoint_extra(extra)
        self.step = int(state["step"])
        self.best = float(extra.get(self.spec.best_key, -math.inf))
        self.best_step, self.best_scores = extra.get("best_step"), extra.get("best_scores")
        self.history = extra.get("history", self.history)
        self.ctx.schedule.elapsed_before = float(extra.get("elapsed_s", 0.0))
        self.ctx.log(f"resumed from {last} at step {self.step} (best {self.best:.3f})")
        return extra.get("weight_average")

    def _train_step(self, step: int) -> Mapping[str, float]:
        losses = self.net.train_step(step)
        if self.average is not None:
            self.average.update(self.net.model)
        return losses

    def _validate(self, step: int) -> dict[str, Any]:
        result = self.net.validate(validated_model(self.net.model, self.average))
        if self.spec.latest_is_best or result.score > self.best:
            self.best, self.best_step, self.best_scores = result.score, step, result.scores
            self._save_best(step)
        return {**result.log, "best": self.best}

    def _extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {
            **self.net.describe(), self.spec.best_key: self.best, "best_step": self.best_step,
            "best_scores": self.best_scores, "elapsed_s": self.ctx.schedule.elapsed_s(),
            "history": self.history, "machine": self.machine, "commit": self.commit,
            "args": _args_record(self.spec.args), "data": self.data,
            **self.net.checkpoint_extra(),
        }
        if self.average is not None:
            extra["weight_average"] = self.average.state_dict()
        return extra

    def _save_last(self, step: int) -> None:
        self.segment["end_step"] = step
        save_checkpoint(self.ctx.last_path, model=self.net.model, optimizer=self.net.optimizer,
                        scheduler=self.net.scheduler, step=step, np_rng=self.ctx.np_rng,
                        extra=self._extra())

    def _save_best(self, step: int) -> None:
        """The validated weights, and only them: export reads this file, resumes don't."""
        self.segment["end_step"] = step
        model = validated_model(self.net.model, self.average)
        if self.spec.best_weights_only:
            atomic_torch_save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                              self.ctx.best_path)
        else:
            save_checkpoint(self.ctx.best_path, model=model, step=step, extra=self._extra())


# --------------------------------------------------------------------------- schedule


def cosine_factor(step: int, total_steps: int, warmup_steps: int = 0,
                  min_ratio: float = 0.01) -> float:
    """LR multiplier: linear warm-up to 1, then cosine from 1 down to ``min_ratio`` at the end."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


# --------------------------------------------------------------------------- weight average


class WeightAverage:
    """An exponential moving average of a model's weights (Polyak averaging).

    Adam's last iterate jitters around the minimum at a constant learning rate; the average of
    the last ~1/(1 - decay) iterates sits nearer to it, which the cosine decay otherwise only
    reaches at its very end. Floating-point parameters and buffers are averaged, others copied.
    The effective decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates, so a
    freshly started average is not dominated by its initial copy.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged = self.model.state_dict()
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                averaged[name].lerp_(value.detach(), 1.0 - decay)
            else:
                averaged[name].copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        self.updates = int(state["updates"])


def resumed_weight_average(
    model: torch.nn.Module, decay: float, saved: Mapping[str, Any] | None
) -> WeightAverage | None:
    """The run's average (None when `decay` is 0), continuing `saved` when a resume stored one.

    Call it after any resume: without a stored average it starts from the resumed weights.
    """
    if not decay:
        return None
    average = WeightAverage(model, decay)
    if saved is not None:
        average.load_state_dict(saved)
    return average


def validated_model(model: torch.nn.Module, average: WeightAverage | None) -> torch.nn.Module:
    """What validation scores and ``best.pt`` keeps (so export ships): the average if kept."""
    return average.model if average is not None else model


# --------------------------------------------------------------------------- checkpoints


def rng_state(np_rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Every RNG a training loop may draw from, in a torch.save-able form."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if np_rng is not None:
        state["numpy"] = np_rng.bit_generator.state
    return state


def restore_rng_state(state: Mapping[str, Any], np_rng: np.random.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if np_rng is not None and "numpy" in state:
        np_rng.bit_generator.state = state["numpy"]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; these are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    step: int = 0,
    np_rng: np.random.Generator | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Atomically save everything needed to resume: model, optimizer, scheduler, step, RNGs."""
    state: dict[str, Any] = {
        "model": model.state_dict(),
        "step": step,
        "rng": rng_state(np_rng),
        "extra": dict(extra or {}),
        "saved_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    atomic_torch_save(state, path)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file next to ``path``, then rename (atomic on POSIX): a reader
    never sees a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    np_rng: np.random.Generator | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load a :func:`save_checkpoint` file into the given objects (strict model keys).

    Returns the raw checkpoint dict (``step``, ``extra``, ...). Our own files only: it unpickles
    python objects (RNG states), so never point it at a checkpoint from elsewhere.
    """
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if model is not None:
        model.load_state_dict(state["model"], strict=True)
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng and "rng" in state:
        restore_rng_state(state["rng"], np_rng)
    return state


# --------------------------------------------------------------------------- shipping


def git_commit(repo_root: str | Path = REPO_ROOT) -> str:
    """``git rev-parse HEAD`` of the training code (plus ``-dirty`` when it has local edits)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "training", "shared"],
                           cwd=repo_root, capture_output=True, text=True).stdout.strip()
    return f"{head}-dirty" if dirty else head


def export_fp16_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | Path,
                            metadata: Mapping[str, str] | None = None,
                            keep_fp32: tuple[str, ...] = ("running_mean", "running_var")) -> int:
    """Write float tensors as fp16 (keys ending in ``keep_fp32`` stay fp32), skip integer
    buffers (e.g. BN's ``num_batches_tracked``). Returns the file size in bytes.
    """
    from safetensors.torch import save_file

    tensors = {}
    for key, value in state_dict.items():
        if not value.is_floating_point():
            continue
        dtype = torch.float32 if key.endswith(keep_fp32) else torch.float16
        tensors[key] = value.detach().to("cpu", dtype).contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=dict(metadata or {}))
    return path.stat().st_size


def training_lineage(init: str | Path | None, steps: int) -> dict[str, Any]:
    """Provenance fields for a run that started from shipped weights (``--init``).

    Reads the provenance JSON beside those weights (export before replacing them) so the new
    file says what it was resumed from and how many steps are behind it in all.
    """
    if init is None or str(init) in ("", "None"):
        return {"steps_total": steps}
    path = Path(init)
    meta = path.with_suffix(".json")
    prior = json.loads(meta.read_text()) if meta.is_file() else {}
    prior_steps = int(prior.get("steps_total", prior.get("steps", 0)) or 0)
    sha = prior.get("sha256") or (hashlib.sha256(path.read_bytes()).hexdigest()
                                  if path.is_file() else None)
    return {
        "resumed_from": {"file": path.name, "sha256": sha, "steps_total": prior_steps,
                         "exported_at": prior.get("exported_at")},
        "steps_total": prior_steps + steps,
    }


def write_provenance(path: str | Path, record: Mapping[str, Any]) -> None:
    """Pretty JSON provenance beside shipped weights (data, steps, schedule, machine, commit)."""
    text = json.dumps(dict(record), indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_bytes(path, text.encode())


# --------------------------------------------------------------------------- metrics


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor,
         data_range: float = 1.0) -> float:
    """PSNR in dB between two arrays on the same scale (``data_range`` = peak value)."""
    x = torch.as_tensor(a, dtype=torch.float64)
    y = torch.as_tensor(b, dtype=torch.float64)
    mse = float(torch.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(data_range**2 / mse)
