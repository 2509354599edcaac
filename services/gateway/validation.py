"""Turning the upload form's text fields into validated JobOptions (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from shared.ml import auto, chains, registry
from shared.platform.messages import OUTPUT_FORMATS, TASKS, JobOptions

N = TypeVar("N", int, float)


class InvalidRequest(ValueError):
    """A 4xx: the message says what was wrong and what is accepted."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def parse_options(
    task: str | None,
    fields: Mapping[str, str],
    weights_dir: Path = registry.SHIPPED_WEIGHTS_DIR,
    has_mask: bool | None = None,
) -> JobOptions:
    """The options of a job whose `task` is one fix or a chain of them (`artifacts,denoise`:
    shared.ml.chains says which orders are accepted and how `model` names each step's)."""
    if not task:
        raise InvalidRequest(
            f"the form field 'task' is required: one of {', '.join(TASKS)}, or a chain of them "
            "separated by commas"
        )
    is_auto = task.strip() == chains.AUTO
    try:
        # auto: preprocess picks among these (shared.ml.auto); `model` applies as in a chain.
        steps = auto.AUTO_STEPS if is_auto else chains.validate_chain(task, has_mask)
        models = chains.parse_models(
            fields.get("model") or "", steps, lambda t: _models_for(t, weights_dir, is_auto)
        )
    except chains.ChainError as exc:
        raise InvalidRequest(str(exc)) from None
    ensemble = _flag(fields, "ensemble")
    if ensemble and not any(registry.offers_ensemble(s, models[s]) for s in steps):
        offering = [
            f"{s}:{m}" if len(steps) > 1 else m
            for s in steps
            for m in registry.models_for(s, weights_dir)
            if registry.offers_ensemble(s, m)
        ]
        what = f"{steps[0]!r} model {models[steps[0]]!r}" if len(steps) == 1 else "any step"
        raise InvalidRequest(
            f"ensemble=true is not offered by {what}"
            + (f": use model {', '.join(offering)}" if offering else "")
        )
    # strength is superres's option: in a chain, its step's model is the one asked.
    reads_strength = "superres" if "superres" in steps else steps[0]
    return JobOptions(
        model=models[steps[0]],
        sigma=_auto_or_number(fields, "sigma", float, registry.SIGMA_RANGE),
        quality=_auto_or_number(fields, "quality", int, registry.JPEG_QUALITY_RANGE),
        scale=_scale(fields),
        max_side=_optional_int(fields, "max_side", registry.MAX_SIDE_RANGE),
        format=_format(fields),
        strength=_strength(reads_strength, models[reads_strength], fields, weights_dir),
        iterations=_optional_int(fields, "iterations", registry.DIP_ITERATIONS_RANGE),
        ensemble=ensemble,
        models=models if len(steps) > 1 or is_auto else {},
    )


def _strength(task: str, model: str, fields: Mapping[str, str], weights_dir: Path) -> float:
    value = _number(fields, "strength", float, registry.STRENGTH_RANGE, default=0.0)
    if value > 0 and not registry.offers_strength(task, model, weights_dir):
        raise InvalidRequest(
            f"strength={value:g} needs GAN weights, which {task!r} model {model!r} does not "
            "have here: leave it out (or 0)"
        )
    return value


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}


def _flag(fields: Mapping[str, str], name: str) -> bool:
    raw = (fields.get(name) or "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise InvalidRequest(f"{name}={raw!r} is not a yes/no value: use true or false")


def _models_for(task: str, weights_dir: Path, is_auto: bool) -> list[str]:
    """A task's installed models, the default first: auto's own default where it has one."""
    available = registry.models_for(task, weights_dir)
    return auto.models_in_preference(task, available) if is_auto else available


def _auto_or_number(
    fields: Mapping[str, str], name: str, kind: type[N], bounds: tuple[N, N]
) -> N | None:
    raw = (fields.get(name) or "auto").strip().lower()
    if raw == "auto":
        return None
    return _number(fields, name, kind, bounds)


def _number(
    fields: Mapping[str, str], name: str, kind: type[N], bounds: tuple[N, N],
    default: N | None = None,
) -> N:
    raw = (fields.get(name) or "").strip()
    if not raw and default is not None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise InvalidRequest(f"{name}={raw!r} is not a {kind.__name__}") from None
    low, high = bounds
    if not low <= value <= high:
        raise InvalidRequest(f"{name}={value} is out of range: allowed {low}–{high}")
    return value


def _optional_int(fields: Mapping[str, str], name: str, bounds: tuple) -> int | None:
    if not (fields.get(name) or "").strip():
        return None
    return int(_number(fields, name, int, bounds))


def _scale(fields: Mapping[str, str]) -> int:
    raw = (fields.get("scale") or str(registry.SCALES[0])).strip()
    if raw not in {str(s) for s in registry.SCALES}:
        raise InvalidRequest(f"scale={raw!r} is not served: use {registry.SCALES}")
    return int(raw)


def _format(fields: Mapping[str, str]) -> str:
    fmt = (fields.get("format") or "png").strip().lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in OUTPUT_FORMATS:
        raise InvalidRequest(
            f"format={fmt!r} is not offered: use one of {', '.join(OUTPUT_FORMATS)}"
        )
    return fmt
