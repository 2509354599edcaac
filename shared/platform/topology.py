"""The broker topology, defined once: exchanges, queues, routing keys, dead letters.

Every service declares all of it idempotently at start-up, so start order never matters.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.ml import registry

JOBS_EXCHANGE = "restora.jobs"  # direct: routing key = service name
STATUS_EXCHANGE = "restora.status"  # fanout: every gateway replica hears every status
DEAD_LETTER_EXCHANGE = "restora.dead"  # direct: routing key = service name

# A message whose handler failed this many times goes to the service's dead-letter queue.
DELIVERY_LIMIT = 3
# Dead letters the gateway cannot read, or still fails to handle after this many tries, are
# parked here (default exchange, routing key = queue name) for an operator to inspect.
PARKED_QUEUE = "restora.parked"
DEAD_LETTER_ATTEMPTS = 5
# One message at a time per consumer: inference saturates the machine anyway, and a
# prefetched message would wait behind a long job instead of going to an idle replica.
PREFETCH = 1
# RabbitMQ's consumer_timeout (ms): above the longest job allowed. The same value is set
# in the tests' broker, docker-compose.yml and k8s/.
CONSUMER_TIMEOUT_MS = 3_600_000


@dataclass(frozen=True)
class QueueSpec:
    service: str

    @property
    def name(self) -> str:
        return f"restora.{self.service}"

    @property
    def routing_key(self) -> str:
        return self.service

    @property
    def dead_letter_queue(self) -> str:
        return f"restora.{self.service}.dead"


PREPROCESS = QueueSpec("preprocess")
DENOISE = QueueSpec("denoise")
SUPERRES = QueueSpec("superres")
INPAINT = QueueSpec("inpaint")
# Deep Image Prior optimises a network per image for minutes: its own queue and workers, so a
# DIP job never waits in front of (or holds up) the fast networks.
DIP = QueueSpec("dip")
WORK_QUEUES: tuple[QueueSpec, ...] = (PREPROCESS, DENOISE, SUPERRES, INPAINT, DIP)

_SERVICE_FOR_TASK = {
    "denoise": DENOISE,
    "artifacts": DENOISE,
    "superres": SUPERRES,
    "inpaint": INPAINT,
}


def queue_for_task(task: str, model: str = "") -> QueueSpec:
    """The model service's queue that serves `task` with `model`: a slow restorer (one fitted
    per image) has its own."""
    restorer = registry.find(task, model)
    return DIP if restorer is not None and restorer.slow else _SERVICE_FOR_TASK[task]


def tasks_served_by(queue: QueueSpec) -> tuple[str, ...]:
    """The tasks whose fast restorers consume `queue` (none for the slow restorers' queue)."""
    return tuple(task for task, spec in _SERVICE_FOR_TASK.items() if spec == queue)
