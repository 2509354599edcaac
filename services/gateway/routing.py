"""Where a submitted job goes first: preprocess, or straight to its model's queue.

Preprocess decodes an upload to validate it and normalises it (orientation, colour mode, alpha,
colour profile, `max_side`). A PNG whose header says there is nothing to normalise would leave
it unchanged (its `pixels_as_uploaded` case), so the gateway hands such a job to its first
model itself: the model service reads the upload as its input, and a corrupt body fails there
with the same reason. One hop fewer: a 512² denoise through RabbitMQ and S3 was seen running
47–51 ms after its POST began, against 53–70 ms through preprocess (`make bench-overhead`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.gateway.uploads import UploadedFile
from shared.ml import chains
from shared.ml.imaging import shrunk_size
from shared.platform.config import InputLimitSettings
from shared.platform.messages import JobOptions, RestoreRequested, input_facts


@dataclass(frozen=True)
class StraightToModel:
    """A job that skips preprocess: its request and the input facts preprocess would tell."""

    request: RestoreRequested
    input_facts: dict[str, Any]


def straight_to_model(
    job_id: str, task: str, options: JobOptions, upload: UploadedFile, upload_key: str,
    submitted_at: float, limits: InputLimitSettings,
) -> StraightToModel | None:
    """The first model's request for a job preprocess would pass on unchanged, else None.

    None sends the job through preprocess, which also refuses what is over a limit with the
    limit's name: `auto` (it chooses its steps from the pixels), masks (inpainting), a
    `max_side` that shrinks, an image over a step's pixel limit, anything but a plain PNG.
    """
    steps = chains.steps_of(task)
    if task == chains.AUTO or "inpaint" in steps or not upload.needs_no_normalising:
        return None
    size = upload.dimensions
    if size is None or shrunk_size(size, options.max_side) != size:
        return None
    if size[0] * size[1] > min(limits.max_pixels_for(step) for step in steps):
        return None
    request = RestoreRequested(
        job_id=job_id,
        task=steps[0],
        options=options,
        input_key=upload_key,
        source_format="PNG",
        submitted_at=submitted_at,
        steps=list(steps) if len(steps) > 1 else [],
    )
    return StraightToModel(request, input_facts(size[0], size[1], "PNG", False, None))
