"""OpenTelemetry metrics: stage latencies, queue waits, jobs in flight, failures, queue depth.

Instruments live on one `MeterProvider` per process, made on first use (services need no
set-up call; `setup_metrics` only names the service earlier). Readers:

- Prometheus, always: a pull reader costs nothing until scraped; `GET /metrics` on the
  gateway and on each service's health port serves it in the Prometheus text format.
- `OTEL_METRICS_EXPORTER` (comma-separated, standard OTel variable) adds push exporters:
  `otlp` (OTLP/HTTP to `OTEL_EXPORTER_OTLP_ENDPOINT`, the `otlp` extra) or `console`;
  `none` (the embedded default) or `prometheus` add nothing.

Where each number is measured: a service observes the stage it ran (`observe_stage`); queue
waits and end-to-end latency span services, so they are observed once, by whichever service
writes the job's record (`observe_record`). Prometheus sums the services' series.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from shared.platform.logging import get_logger

log = get_logger(__name__)

# Seconds: from a thumbnail's encode (milliseconds) to a large DIP inpainting (minutes).
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
)
# Record column → queue label: waits are only known once the job's record is built.
_RECORD_QUEUES = {"queue_preprocess_s": "preprocess", "queue_inference_s": "inference"}

DepthSource = Callable[[], Mapping[str, int]]


@dataclass
class _Instruments:
    provider: MeterProvider
    registry: Any  # prometheus_client.CollectorRegistry
    stage_duration: Any
    queue_wait: Any
    job_duration: Any
    jobs_finished: Any
    jobs_failed: Any
    in_flight: Any
    delivery_errors: Any


_lock = threading.Lock()
_instruments: _Instruments | None = None
_depth_sources: list[DepthSource] = []


def setup_metrics(service_name: str = "restora") -> MeterProvider:
    """Make this process's meter provider and instruments once; later calls return it."""
    global _instruments
    with _lock:
        if _instruments is None:
            _instruments = _create(service_name)
    return _instruments.provider


def _get() -> _Instruments:
    if _instruments is None:
        setup_metrics()
    assert _instruments is not None
    return _instruments


def _readers() -> tuple[list[MetricReader], Any]:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry

    # Our own registry: only these metrics, and a second set-up in tests cannot collide.
    registry = CollectorRegistry(auto_describe=True)
    readers: list[MetricReader] = [
        PrometheusMetricReader(registry=registry, scope_info_enabled=False)
    ]
    choices = os.environ.get("OTEL_METRICS_EXPORTER", "none").lower().split(",")
    for choice in (c.strip() for c in choices):
        if choice == "otlp":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        elif choice == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        elif choice not in ("", "none", "prometheus"):
            log.warning("unknown_metrics_exporter", exporter=choice)
    return readers, registry


def _create(service_name: str) -> _Instruments:
    readers, registry = _readers()
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = MeterProvider(resource=resource, metric_readers=readers)
    meter = provider.get_meter("restora")

    def histogram(name: str, description: str) -> Any:
        return meter.create_histogram(
            name,
            unit="s",
            description=description,
            explicit_bucket_boundaries_advisory=list(LATENCY_BUCKETS),
        )

    meter.create_observable_gauge(
        "restora.queue.depth",
        callbacks=[_observe_depths],
        unit="{message}",
        description="Messages waiting in each work queue",
    )
    return _Instruments(
        provider=provider,
        registry=registry,
        stage_duration=histogram("restora.stage.duration", "Processing time of a job stage"),
        queue_wait=histogram("restora.queue.wait", "Time a job waited in a work queue"),
        job_duration=histogram("restora.job.duration", "End-to-end latency of finished jobs"),
        jobs_finished=meter.create_counter(
            "restora.jobs.finished", unit="{job}", description="Jobs that ended, by outcome"
        ),
        jobs_failed=meter.create_counter(
            "restora.jobs.failed", unit="{job}", description="Failed jobs, by reporting stage"
        ),
        in_flight=meter.create_up_down_counter(
            "restora.jobs.in_flight", unit="{job}", description="Deliveries being processed"
        ),
        delivery_errors=meter.create_counter(
            "restora.deliveries.failed",
            unit="{delivery}",
            description="Deliveries whose handler raised (retried or dead-lettered)",
        ),
    )


# ------------------------------------------------------------------------------ recording
def observe_stage(stage: str, seconds: float | None, task: str) -> None:
    """One stage's processing time, where the stage ran."""
    if seconds is not None and seconds >= 0:
        _get().stage_duration.record(seconds, {"stage": stage, "task": task})


def observe_stages(timings: Mapping[str, float], task: str) -> None:
    """A model service's timings dict: `load_s`, `inference_s`, ... → stages load, ..."""
    for name, seconds in timings.items():
        observe_stage(name.removesuffix("_s"), seconds, task)


def observe_record(record: Mapping[str, Any]) -> None:
    """What only a whole job shows: queue waits, end-to-end latency, outcome."""
    instruments, task = _get(), str(record.get("task"))
    for column, queue in _RECORD_QUEUES.items():
        if (wait := record.get(column)) is not None:
            instruments.queue_wait.record(wait, {"queue": queue, "task": task})
    outcome = str(record.get("outcome"))
    instruments.jobs_finished.add(1, {"task": task, "outcome": outcome})
    if outcome == "failed":
        instruments.jobs_failed.add(1, {"task": task, "stage": str(record.get("final_stage"))})
    elif record.get("latency_s") is not None:
        instruments.job_duration.record(record["latency_s"], {"task": task})


H = TypeVar("H", bound=Callable[..., Awaitable[None]])


def instrument_handler(stage: str, handler: H) -> H:
    """Wrap a bus handler: counts the deliveries in flight and those whose handler raised."""

    async def wrapped(*args: Any, **kwargs: Any) -> None:
        instruments = _get()
        instruments.in_flight.add(1, {"stage": stage})
        try:
            await handler(*args, **kwargs)
        except Exception:
            instruments.delivery_errors.add(1, {"stage": stage})
            raise
        finally:
            instruments.in_flight.add(-1, {"stage": stage})

    return wrapped  # type: ignore[return-value]


# ------------------------------------------------------------------------------ queue depth
def add_queue_depth_source(source: DepthSource) -> None:
    """`source()` → {queue name: messages waiting}; read at each collection (keep it cheap)."""
    _get()
    _depth_sources.append(source)


def remove_queue_depth_source(source: DepthSource) -> None:
    if source in _depth_sources:
        _depth_sources.remove(source)


def _observe_depths(_: CallbackOptions) -> Iterable[Observation]:
    depths: dict[str, int] = {}
    for source in list(_depth_sources):
        try:
            depths.update(source())
        except Exception:
            log.warning("queue_depth_source_failed", exc_info=True)
    return [Observation(depth, {"queue": queue}) for queue, depth in sorted(depths.items())]


# ------------------------------------------------------------------------------ exposition
def prometheus_text() -> tuple[bytes, str]:
    """(body, content type) of every metric in the Prometheus text format."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(_get().registry), CONTENT_TYPE_LATEST


async def prometheus_handler(_: web.Request) -> web.Response:
    body, content_type = prometheus_text()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response
