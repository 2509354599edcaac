"""The one provenance schema of the weights directory: every ``<name>.json`` beside a weights
file has exactly these keys, whether the weights were trained here (training/export.py writes
them) or converted from a licensed package (shared/ml/convert_x4plus.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TrainingData:
    """Provenance's ``data``: what the network was trained and validated on."""

    description: Any  # the trainer's own description (sources, counts, degradations)
    root: str | None  # None: not recorded
    held_out_for_validation: Any  # the held-out image names (per source for MWCNN)


@dataclass(frozen=True)
class Provenance:
    """The one provenance schema: every ``weights/<name>.json`` has exactly these keys.

    None marks what an older export did not record. Network-specific facts live in the values:
    ``usage`` (how to call the network: input, and MWCNN's level map and gray handling),
    ``validation`` (the trainer's scores of the shipped weights, in the network's metric) and
    ``checks`` (what the export verified: fp16 against fp32 scores, strict reload).
    """

    file: str
    sha256: str
    bytes: int
    dtype: str  # of the stored tensors, e.g. "float16"
    network: str  # name, paper and the model file in shared/ml/models/
    config: Any  # the network's config, as its loader reads it
    parameters: int
    task: str  # the service task it serves: denoise, artifacts, superres, inpaint
    usage: dict[str, str]
    steps: int | None  # steps of the exported run, as its checkpoint records them
    best_step: int | None  # the step of the shipped weights (below `steps` when a run went on)
    steps_total: int | None  # steps behind the weights in all (None: not trained here)
    resumed_from: dict[str, Any] | None  # the shipped file the run started from (--init)
    train_hours: float | None
    training_args: dict[str, Any] | None
    training_history: dict[str, Any] | None  # every resumed segment: steps, args, commit
    validation: Any
    checks: dict[str, Any]
    data: TrainingData
    machine: dict[str, Any] | None  # the training machine (CPU, flags, bf16)
    training_code_commit: str | None
    export_code_commit: str | None
    checkpoint_saved_at: str | None
    exported_at: str | None
    # Weights converted from a third-party package rather than trained here: the package,
    # version, licence and the pinned hashes of its files (None for our own training).
    source: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Provenance:
        """Read a provenance file back; a key missing from or unknown to the schema raises."""
        fields = dict(record)
        fields["data"] = TrainingData(**fields["data"])
        return cls(**fields)
