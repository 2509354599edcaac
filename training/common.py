"""Generic training helpers shared by every training script (MWCNN, ESRGAN, ...).

Nothing here knows about a particular network. The pieces:

* :class:`RunLog`: timestamped lines appended to ``<run_dir>/train.log`` (and echoed through
  tqdm so they do not break the progress bar).
* :func:`save_checkpoint` / :func:`load_checkpoint`: atomic, resumable checkpoints holding the
  model, optimizer, scheduler, step, RNG states (torch, numpy Generator, python) and any extras.
* :class:`Schedule`: linear warm-up then cosine decay (a LambdaLR), over steps or a
  wall-clock budget, whichever runs out first.
* :class:`Every`: "has N seconds passed?" for time-based checkpointing.
* :func:`run_steps`: the step loop every script shares (progress bar, steps/hour and loss
  windows, validation points kept out of the rate, periodic and final checkpoints, a clean stop
  on SIGTERM/SIGINT or after ``--max-minutes``); the script supplies one optimisation step.
* :class:`WeightAverage`: an exponential moving average of the weights (validated and shipped
  in place of the raw weights when a script offers ``--ema``).
* :func:`machine_summary`: CPU model, flags, threads, bf16 decision (from ``shared.ml.accel``).
* :func:`export_fp16_safetensors` / :func:`write_provenance` / :func:`git_commit`: shipping.
* :func:`psnr`: the plain PSNR used for validation logging.
"""

from __future__ import annotations

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from shared.ml.accel import cpu_flags, cpu_model, describe_accelerator

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
    touching the schedule, unlike the schedule's ``hours``.
    """

    log_every: int
    val_every: int
    ckpt_minutes: float
    max_minutes: float | None = None


def run_steps(
    settings: LoopSettings,
    schedule: Schedule,
    *,
    start_step: int,
    desc: str,
    log: RunLog,
    train_step: Callable[[], Mapping[str, float]],
    current_lr: Callable[[], float],
    save_last: Callable[[int], None],
    validate: Callable[[int], Mapping[str, Any]] | None = None,
) -> tuple[int, bool]:
    """Run ``train_step`` until the schedule is done; return (the step reached, stopped by a
    signal).

    ``train_step`` does one optimisation step and returns its losses, averaged per log window;
    ``validate(step)`` runs every ``val_every`` steps and at the end of the schedule (it keeps
    its own best checkpoint and returns the fields of the ``val`` log line, which the loop times
    and writes); ``save_last(step)`` writes the resumable checkpoint every ``ckpt_minutes`` and
    once more when the loop ends, whatever ended it.
    """
    stop = StopFlag()
    ckpt_timer = Every(settings.ckpt_minutes * 60)
    started = time.monotonic()
    window_start, window_steps = time.monotonic(), 0
    sums: dict[str, float] = {}
    step = start_step
    bar = progress_bar(schedule.total_steps, initial=step, desc=desc)
    while not schedule.done(step) and not stop.stop:
        for name, value in train_step().items():
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
            t0 = time.monotonic()
            fields = validate(step)
            seconds = time.monotonic() - t0
            log.json("val", step=step, **fields, seconds=round(seconds, 1))
            window_start += seconds  # keep validation out of steps/hour
        if ckpt_timer():
            save_last(step)
        if settings.max_minutes and time.monotonic() - started > settings.max_minutes * 60:
            log(f"--max-minutes {settings.max_minutes} reached at step {step}")
            break
    bar.close()
    save_last(step)
    return step, stop.stop


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Serialise to a temp file next to the target, then rename (atomic on POSIX).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
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
