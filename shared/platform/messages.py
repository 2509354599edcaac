"""The messages services exchange: small, typed, versioned; keys to objects, never bytes.

Flow: gateway --JobSubmitted--> preprocess --RestoreRequested--> model service (a PNG with
nothing to normalise: gateway --RestoreRequested--> model service), and every stage reports
JobStatus events (to the status exchange and to the job's event log).
"""

from __future__ import annotations

import json
import time
import types
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cache
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

from shared.ml import registry
from shared.ml.registry import TASKS as TASKS  # re-exported: a job names one of them

# Version 1, extended compatibly: fields added since (a chain's `steps`, `step`, `models`) have
# defaults and are left out of a message that does not use them, so a message without them
# decodes as before and a single-task message reads the same to a service that predates them.
SCHEMA_VERSION = 1

Task = Literal["denoise", "artifacts", "superres", "inpaint"]  # registry.TASKS, for type checks

State = Literal["queued", "preprocessing", "running", "done", "failed", "cancelled"]
# A job's state only moves forward along this order; the three last are final.
STATE_RANK: dict[str, int] = {
    "queued": 0,
    "preprocessing": 1,
    "running": 2,
    "done": 3,
    "failed": 3,
    "cancelled": 3,
}
FINAL_STATES = frozenset({"done", "failed", "cancelled"})

OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpeg", "webp")


class MessageError(ValueError):
    """A message that cannot be understood: wrong type, version or fields."""


@dataclass(frozen=True)
class JobOptions:
    """What the user asked for, validated by the gateway."""

    model: str
    sigma: float | None = None  # noise level on 0–255; None = estimate from the image
    quality: int | None = None  # JPEG quality; None = read from the file's tables
    scale: int = 4
    max_side: int | None = None
    format: str = "png"
    strength: float = 0.0  # SR: interpolation between PSNR (0) and GAN (1) weights
    iterations: int | None = None  # DIP
    ensemble: bool = False  # average over 8 flips/rotations (8× the time; networks that offer it)
    # A chain's model per step (task → model); empty for a single task, which uses `model`.
    models: dict[str, str] = field(default_factory=dict)

    def for_step(self, step: str) -> JobOptions:
        """The options one step of a chain runs with: its model, ensemble where it offers it."""
        if not self.models:
            return self
        model = self.models.get(step, self.model)
        return replace(self, model=model,
                       ensemble=self.ensemble and registry.offers_ensemble(step, model))


@dataclass(frozen=True)
class JobSubmitted:
    """gateway → preprocess: an upload is stored and waits for normalisation."""

    TYPE: ClassVar[str] = "job.submitted"
    job_id: str
    task: str
    options: JobOptions
    upload_key: str
    mask_key: str | None = None
    submitted_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class RestoreRequested:
    """preprocess (or the gateway, for a PNG with nothing to normalise) → model service: a
    normalised input is stored and waits for a network."""

    TYPE: ClassVar[str] = "restore.requested"
    job_id: str
    task: str
    options: JobOptions
    input_key: str
    mask_key: str | None = None
    alpha_key: str | None = None
    icc_key: str | None = None
    # EXIF orientation to apply to the result (JPEG deblocking runs on the stored grid).
    orientation_after: int = 1
    source_format: str = ""
    submitted_at: float = field(default_factory=time.time)
    # A chain: every step in order (`task` is steps[step]); empty for a single task. A step's
    # service publishes the next step's request with its output as the input.
    steps: list[str] = field(default_factory=list)
    step: int = 0

    @property
    def is_last_step(self) -> bool:
        return self.step >= len(self.steps) - 1


@dataclass(frozen=True)
class JobStatus:
    """Any stage → status exchange and job event log: a state change or progress."""

    TYPE: ClassVar[str] = "job.status"
    job_id: str
    state: str
    stage: str
    at: float = field(default_factory=time.time)
    progress: float | None = None
    error: str | None = None
    result_key: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


Message = JobSubmitted | RestoreRequested | JobStatus
_MESSAGE_TYPES: dict[str, type[JobSubmitted | RestoreRequested | JobStatus]] = {
    cls.TYPE: cls for cls in (JobSubmitted, RestoreRequested, JobStatus)
}


# Fields left out of an encoded message while they hold their default (see SCHEMA_VERSION).
_OMITTED_WHEN_EMPTY = {"steps": [], "step": 0, "models": {}}


def input_facts(width: int, height: int, source_format: str, resized: bool,
                jpeg_quality: int | None) -> dict[str, Any]:
    """What a job's status tells of its input (`details["input"]`, read by its record): told by
    preprocess, or by the gateway for a PNG it sends straight to a model."""
    return {"width": width, "height": height, "format": source_format, "resized": resized,
            "jpeg_quality": jpeg_quality}


def _compact(body: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if _OMITTED_WHEN_EMPTY.get(k, ...) != v}
    if isinstance(out.get("options"), dict):
        out["options"] = _compact(out["options"])
    return out


def encode(message: Message) -> bytes:
    body = asdict(message)
    if not isinstance(message, JobStatus):
        body = _compact(body)
    envelope = {"type": message.TYPE, "version": SCHEMA_VERSION, "body": body}
    return json.dumps(envelope, separators=(",", ":")).encode()


def decode(data: bytes) -> Message:
    """The message in `data`; anything malformed raises `MessageError`, never another error.

    A consumer relies on that: a message that cannot be read is rejected (dead-lettered, then
    parked) instead of failing its handler over and over.
    """
    try:
        envelope = json.loads(data)
        cls = _MESSAGE_TYPES[envelope["type"]]
        version = envelope["version"]
        body = envelope["body"]
    except Exception as exc:  # ValueError, KeyError, TypeError, RecursionError...
        raise MessageError(f"unreadable message: {exc!r}") from exc
    if version != SCHEMA_VERSION or type(version) is not int:
        raise MessageError(f"unsupported schema version {version!r} for {cls.TYPE}")
    return _build(cls, body)


def job_id_of(data: bytes) -> str | None:
    """The job id an unreadable message names, if it names one (to fail that job)."""
    try:
        job_id = json.loads(data)["body"]["job_id"]
    except Exception:
        return None
    return job_id if isinstance(job_id, str) else None


def _build(cls: type, body: object) -> Any:
    if not isinstance(body, dict):
        raise MessageError(f"{cls.__name__}: the body is a {type(body).__name__}, not an object")
    known = {f.name for f in fields(cls)}
    unknown = set(body) - known
    if unknown:
        raise MessageError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    body = dict(body)
    if "options" in body:
        body["options"] = _build(JobOptions, body["options"])
    hints = _field_types(cls)
    for name, value in body.items():
        if not _conforms(value, hints[name]):
            raise MessageError(f"{cls.__name__}.{name}: unexpected {type(value).__name__}")
    try:
        return cls(**body)
    except TypeError as exc:  # a required field missing
        raise MessageError(f"{cls.__name__}: {exc}") from exc


@cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _conforms(value: object, hint: Any) -> bool:
    """Whether a decoded JSON value fits a field's annotation (the types messages use)."""
    if get_origin(hint) in (Union, types.UnionType):
        return any(_conforms(value, arg) for arg in get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    origin = get_origin(hint) or hint
    return isinstance(value, origin) if isinstance(origin, type) else True
