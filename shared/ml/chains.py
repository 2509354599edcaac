"""Chains of fixes: `task=artifacts,denoise,superres` runs each step on the previous one's output.

Pure: the gateway validates a chain and its models with these functions, preprocess and the
model services read the steps back from the job's task. A single task is a chain of one.

Only sensible orders are accepted; each rule below is one `ChainError` whose text names it:
- at most MAX_STEPS steps, each a known task, none repeated;
- inpaint comes first (it fills from the photo as sent, before any other fix), and only
  with a mask;
- artifacts comes before denoise (deblocking needs the 8x8 grid the denoiser would blur);
- superres comes last (every other fix is cheaper and better on the small image).

Models: `model` is either one name, used by every step that has a model of that name (the
others take their default), or `step:name` pairs separated by commas
(`model=artifacts:mwcnn,denoise:classic`), steps not named taking their default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shared.ml.registry import TASKS

#: The task that lets preprocess choose the chain from the photo (shared.ml.auto).
AUTO = "auto"
#: The most fixes one job may chain (each is a full pass over the image).
MAX_STEPS = 4
SEPARATOR = ","


class ChainError(ValueError):
    """A chain or its models that cannot run; str(exc) names the rule that was broken."""


def steps_of(task: str) -> tuple[str, ...]:
    """The steps a (validated) task field names, in order: `denoise` → ("denoise",)."""
    return tuple(step.strip() for step in task.split(SEPARATOR) if step.strip())


def is_chain(task: str) -> bool:
    return len(steps_of(task)) > 1


def validate_chain(task: str, has_mask: bool | None = None) -> tuple[str, ...]:
    """The steps of `task`, or a ChainError naming the rule it breaks.

    `has_mask` None skips the mask rule (the caller checks the file itself).
    """
    steps = steps_of(task)
    if not steps:
        raise ChainError(f"the form field 'task' is required: one of {', '.join(TASKS)}, or "
                         "several separated by commas")
    for step in steps:
        if step not in TASKS:
            raise ChainError(f"unknown task {step!r}: use one of {', '.join(TASKS)}")
    if len(steps) > MAX_STEPS:
        raise ChainError(f"a chain has at most {MAX_STEPS} steps; {len(steps)} were given")
    repeated = sorted({s for s in steps if steps.count(s) > 1})
    if repeated:
        raise ChainError(f"a chain repeats no step: {', '.join(repeated)} is given twice")
    if "inpaint" in steps and steps[0] != "inpaint":
        raise ChainError("inpaint comes first in a chain, before any other fix")
    if "artifacts" in steps and "denoise" in steps and (
        steps.index("artifacts") > steps.index("denoise")
    ):
        raise ChainError("artifacts comes before denoise in a chain (deblock, then denoise)")
    if "superres" in steps and steps[-1] != "superres":
        raise ChainError("superres comes last in a chain, after every other fix")
    if has_mask is False and "inpaint" in steps:
        raise ChainError("inpaint needs a 'mask' file: same size as the image, white = fill")
    return steps


def parse_models(
    raw: str, steps: Sequence[str], models_for: Callable[[str], list[str]]
) -> dict[str, str]:
    """Each step's model from the form's `model` field (see the module's doc); `models_for`
    gives a task's available models, best first."""
    raw = raw.strip()
    chosen = {step: models_for(step)[0] for step in steps}
    if not raw:
        return chosen
    if ":" not in raw:
        fits = [step for step in steps if raw in models_for(step)]
        if not fits and len(steps) == 1:
            raise ChainError(f"task {steps[0]!r} has no model {raw!r}: use one of "
                             f"{', '.join(models_for(steps[0]))}")
        if not fits:
            offered = "; ".join(f"{s}: {', '.join(models_for(s))}" for s in steps)
            raise ChainError(f"no step of the chain has a model {raw!r}: use one of {offered}")
        return chosen | dict.fromkeys(fits, raw)
    for pair in raw.split(SEPARATOR):
        step, _, model = (part.strip() for part in pair.partition(":"))
        if step not in steps:
            raise ChainError(f"model {pair.strip()!r} names step {step!r}, which is not in the "
                             f"chain ({', '.join(steps)})")
        if model not in models_for(step):
            raise ChainError(f"task {step!r} has no model {model!r}: use one of "
                             f"{', '.join(models_for(step))}")
        chosen[step] = model
    return chosen
