"""Typed settings, read once from `RESTORA_*` environment variables.

Every field of a settings class maps to `RESTORA_<FIELD_NAME_UPPER>`; the defaults run
the embedded single-machine mode (in-process bus, local-disk store), so `make run`
needs no configuration at all.
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from shared.ml.registry import SHIPPED_WEIGHTS_DIR

ENV_PREFIX = "RESTORA_"
MiB = 1024 * 1024
MP = 1_000_000


@dataclass(frozen=True)
class CommonSettings:
    """What every process needs: where the broker and the object store are."""

    # amqp://user:pass@host:5672/ ; empty = in-process event bus (embedded mode)
    broker_url: str = ""
    # host:port of the S3 API ; empty = local-directory store under data_dir
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "restora"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    # host:port browsers use for presigned links (defaults to s3_endpoint)
    s3_public_endpoint: str = ""
    s3_public_secure: bool = False
    data_dir: Path = Path(".data")
    log_level: str = "info"
    # Secret for signing local-store download links; generated per process when empty.
    link_secret: str = ""
    link_expiry_s: int = 3600
    # The weights directory: what the models read, and what the gateway offers.
    weights_dir: Path = SHIPPED_WEIGHTS_DIR
    # Uploads, results and job events are deleted this long after the job was created
    # (an S3 bucket lifecycle rule, plus the gateway's sweeper for the local store).
    retention_s: int = 7 * 24 * 3600
    # Every S3 call: how long to wait for a connection and for each answer, and how often to
    # retry a refused connection or a 5xx (a server silent past the read timeout is not asked
    # again); calls run on their own pool of this many threads (a submission writes its spec
    # and upload at once: 16 keep 8 submissions apart when the store hangs).
    s3_connect_timeout_s: float = 2.0
    s3_read_timeout_s: float = 3.0
    s3_retries: int = 2
    store_threads: int = 16
    # How long a publish may wait for the broker's confirm before the broker counts as down.
    publish_timeout_s: float = 5.0
    # A worker holding a job writes the job's heartbeat this often.
    heartbeat_interval_s: float = 5.0

    @property
    def embedded_bus(self) -> bool:
        return not self.broker_url

    @property
    def embedded_store(self) -> bool:
        return not self.s3_endpoint


@dataclass(frozen=True)
class InputLimitSettings:
    """The largest input each task takes, in pixels. Preprocess refuses larger images with the
    limit they exceed; the gateway sends a PNG that needs no normalising straight to its model
    only within them (services/gateway/routing.py), so both read the same variables."""

    max_pixels_denoise: int = 40 * MP
    max_pixels_artifacts: int = 40 * MP
    max_pixels_inpaint: int = 40 * MP
    # SR's output is 16x its input: the input cap is what the output may grow to.
    max_pixels_superres: int = 4 * MP

    def max_pixels_for(self, task: str) -> int:
        return int(getattr(self, f"max_pixels_{task}"))


@dataclass(frozen=True)
class GatewaySettings(CommonSettings, InputLimitSettings):
    host: str = "127.0.0.1"
    port: int = 8080
    max_upload_bytes: int = 50 * MiB
    # Jobs with no progress for this long are failed with a reason.
    job_deadline_s: int = 3600
    # How often the gateway sweeps for stalled jobs and expired objects.
    maintenance_interval_s: int = 300
    # Push-back (services/gateway/limits.py). The most jobs that may wait for a task (the
    # preprocess queue plus the task's model queue); beyond it a submission gets 503 with
    # Retry-After. 0 = no limit.
    max_queue_depth: int = 200
    # The most work one job may cost, in work units (about a second of a 2-core CPU each;
    # shared/ml/cost.py), for the fast restorers and for those fitted per image (dip); beyond
    # it a submission gets 413 with a max_side that fits. 0 = no limit.
    max_job_cost: float = 60.0
    max_slow_job_cost: float = 1800.0
    # Unfinished (queued or running) jobs one owner may have: an API key, or else a client
    # address (services/gateway/owner_limits.py); beyond it a submission gets 429. 0 = no limit.
    max_unfinished_per_owner: int = 50
    # Slow clients (services/gateway/connections.py): a connection must send its request line
    # and headers within header_timeout_s; a body may stall for at most body_timeout_s and must
    # then average min_body_rate bytes/s; an idle kept-alive connection is closed after
    # idle_timeout_s; at most max_connections connections are open at once (others get 503).
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    min_body_rate: int = 4096
    idle_timeout_s: float = 30.0
    max_connections: int = 512
    # Access control (services/gateway/auth.py). The operator's credential for the records,
    # the dashboard, /metrics and every job; empty = those routes answer 401 (`make run`
    # makes one at start and prints the dashboard link with it).
    admin_token: str = ""
    # API keys, as sha256 hex digests of the keys (never the keys), separated by commas.
    api_keys: str = ""
    # Requests per minute to /api/v1 per client IP (without an API key) and per API key;
    # 0 = no limit. Token buckets per gateway replica.
    rate_limit_per_minute: int = 0
    api_key_rate_limit_per_minute: int = 0
    # Proxies in front of the gateway that append the client to X-Forwarded-For (the
    # Ingress controller: 1); 0 = the client is the peer address.
    trusted_proxy_hops: int = 0
    # Origins (scheme://host[:port]) other sites' pages may call the API from, separated by
    # commas; empty = same origin only.
    cors_origins: str = ""
    # A job not heard from (heartbeat or status) for this long says "waiting for a worker".
    worker_stale_s: float = 20.0


@dataclass(frozen=True)
class PreprocessSettings(CommonSettings, InputLimitSettings):
    health_port: int = 8081
    max_upload_bytes: int = 50 * MiB


@dataclass(frozen=True)
class ModelRuntimeSettings:
    """What the model runtime is built from (shared.ml.runtime.ModelRuntime)."""

    # torch intra-op threads; 0 = let torch decide (all cores)
    threads: int = 0
    # "auto" (CUDA when present), "cpu" or "cuda"
    device: str = "auto"
    # bf16 autocast where the hardware has it natively and a network keeps >= 50 dB; off = fp32
    bf16: bool = True
    # Keep freed memory in the heap for the next tile instead of handing it back to the kernel
    # (glibc mallopt, shared/ml/allocator.py): a third less CPU time on large images.
    reuse_memory: bool = True
    # Which runtime runs each network's tiles (shared/ml/backends.py): "auto" times PyTorch
    # against ONNX Runtime once per weights file and CPU at load and keeps the faster of those
    # within 50 dB of fp32; "torch" never imports onnxruntime; "onnxruntime" takes it wherever
    # it is installed and accurate, untimed. Without onnxruntime every value runs PyTorch.
    backend: str = "auto"
    # Where the ONNX exports and the backend decisions are kept across restarts; empty =
    # $XDG_CACHE_HOME/restora, else ~/.cache/restora.
    cache_dir: str = ""
    # How many inferences may run at once in this process (embedded mode: 1 for 2 cores).
    max_concurrent_inferences: int = 1
    # Memory one tiled inference may use; 0 = a share of the free memory.
    tile_budget_mb: int = 0
    # An operator's ESRGAN checkpoint (official RRDB_ESRGAN_x4.pth, BasicSR, or ours) used
    # instead of the shipped PSNR weights; empty = the shipped weights.
    esrgan_weights: str = ""


@dataclass(frozen=True)
class ModelServiceSettings(CommonSettings, ModelRuntimeSettings):
    health_port: int = 8082


@dataclass(frozen=True)
class EmbeddedSettings(GatewaySettings, ModelRuntimeSettings):
    """`make run`: the gateway and every service in one process, sharing one model runtime."""


S = TypeVar("S")


def load_settings(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """Build `cls` from the environment; unknown or malformed values fail loudly."""
    env = os.environ if environ is None else environ
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = ENV_PREFIX + f.name.upper()
        if name in env:
            values[f.name] = _convert(env[name], hints[f.name], name)
    return cls(**values)


def _convert(raw: str, hint: Any, name: str) -> Any:
    target = _strip_optional(hint)
    try:
        if target is bool:
            lowered = raw.strip().lower()
            if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off", ""}:
                raise ValueError(raw)
            return lowered in {"1", "true", "yes", "on"}
        if target in (int, float, str, Path):
            return target(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a valid {target.__name__}") from exc
    raise TypeError(f"unsupported settings type {hint!r} for {name}")


def _strip_optional(hint: Any) -> Any:
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def settings_env_names(cls: type) -> list[str]:
    """Every environment variable a settings class reads (deployment checks use this)."""
    return [ENV_PREFIX + f.name.upper() for f in dataclasses.fields(cls)]


__all__ = [
    "CommonSettings",
    "EmbeddedSettings",
    "GatewaySettings",
    "ModelRuntimeSettings",
    "ModelServiceSettings",
    "PreprocessSettings",
    "load_settings",
    "settings_env_names",
]
