"""Pure shared code: settings, message schemas, the job log fold, option validation."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from services.gateway.validation import InvalidRequest, parse_options
from shared.platform import messages
from shared.platform.aio import forget
from shared.platform.blobstore import LocalDirBlobStore
from shared.platform.config import GatewaySettings, PreprocessSettings, load_settings
from shared.platform.jobs import JobLog, JobSpec, fold, is_valid_job_id, new_job_id
from shared.platform.messages import JobOptions, JobStatus, JobSubmitted, RestoreRequested
from shared.platform.topology import queue_for_task


def test_settings_from_environment() -> None:
    env = {"RESTORA_PORT": "9000", "RESTORA_S3_SECURE": "true", "RESTORA_DATA_DIR": "/tmp/x"}
    settings = load_settings(GatewaySettings, env)
    assert settings.port == 9000 and settings.s3_secure is True
    assert settings.data_dir == Path("/tmp/x")
    assert settings.embedded_bus and settings.embedded_store


def test_bad_setting_names_the_variable() -> None:
    with pytest.raises(ValueError, match="RESTORA_PORT"):
        load_settings(GatewaySettings, {"RESTORA_PORT": "eighty"})
    with pytest.raises(ValueError, match="RESTORA_S3_SECURE"):
        load_settings(GatewaySettings, {"RESTORA_S3_SECURE": "maybe"})


def test_pixel_limits_per_task() -> None:
    settings = PreprocessSettings()
    assert settings.max_pixels_for("superres") < settings.max_pixels_for("denoise")


@pytest.mark.parametrize(
    "message",
    [
        JobSubmitted("a" * 32, "inpaint", JobOptions("classic"), "k", "m", submitted_at=2.0),
        RestoreRequested("a" * 32, "artifacts", JobOptions("classic", quality=20), "in", None),
        JobStatus("a" * 32, "done", "denoise", at=3.0, result_key="r", details={"x": 1}),
    ],
)
def test_messages_round_trip(message: messages.Message) -> None:
    assert messages.decode(messages.encode(message)) == message


def test_messages_are_versioned_and_strict() -> None:
    body = json.loads(messages.encode(JobStatus("a" * 32, "queued", "gateway", at=1.0)))
    assert body["version"] == messages.SCHEMA_VERSION
    with pytest.raises(messages.MessageError, match="version"):
        messages.decode(json.dumps({**body, "version": 99}).encode())
    with pytest.raises(messages.MessageError, match="unknown fields"):
        messages.decode(json.dumps({**body, "body": {**body["body"], "x": 1}}).encode())
    with pytest.raises(messages.MessageError):
        messages.decode(b"not json")


def test_messages_carry_keys_not_bytes() -> None:
    encoded = messages.encode(
        RestoreRequested("a" * 32, "denoise", JobOptions("classic"), "jobs/a/work/input.png")
    )
    assert len(encoded) < 1024


def spec() -> JobSpec:
    return JobSpec("a" * 32, "denoise", JobOptions("classic"), created_at=0.0, upload_bytes=1)


def status(state: str, at: float, **fields: object) -> JobStatus:
    return JobStatus("a" * 32, state, "test", at=at, **fields)  # type: ignore[arg-type]


def test_fold_moves_forward_only() -> None:
    events = [status("running", 2.0), status("preprocessing", 3.0), status("queued", 4.0)]
    view = fold(spec(), events)
    assert view.state == "running"
    assert view.stages == {"queued": 0.0, "running": 2.0}


def test_first_final_state_wins() -> None:
    view = fold(spec(), [status("cancelled", 2.0), status("done", 3.0, result_key="r")])
    assert view.state == "cancelled" and view.result_key is None


def test_fold_is_independent_of_arrival_order() -> None:
    events = [
        status("preprocessing", 1.0),
        status("running", 2.0),
        status("running", 2.5, progress=0.5),
        status("done", 3.0, result_key="r", details={"model": "classic"}),
    ]
    forward = fold(spec(), events)
    backward = fold(spec(), list(reversed(events)))
    assert forward.state == backward.state == "done"
    assert forward.result_key == backward.result_key == "r"
    assert forward.stages == backward.stages


@pytest.mark.parametrize(
    ("states", "final_state"),
    [
        ([], None),
        (["preprocessing", "running"], None),
        (["running", "done"], "done"),
        (["cancelled", "done"], "cancelled"),  # the first final state, as the view has it
        (["running", "failed", "cancelled"], "failed"),
    ],
)
async def test_a_jobs_end_is_read_from_its_listing_as_its_view_has_it(
    tmp_path: Path, states: list[str], final_state: str | None
) -> None:
    log = JobLog(LocalDirBlobStore(tmp_path, b"k"))
    await log.create(spec())
    for at, state in enumerate(states, start=1):
        await log.append(status(state, float(at)))
    end = await log.end(spec().job_id)
    view = await log.view(spec().job_id)
    assert view is not None and end.exists
    assert end.final_state == final_state
    assert end.is_over == view.is_final
    if final_state:
        assert view.state == final_state


async def test_a_deleted_job_has_ended(tmp_path: Path) -> None:
    store = LocalDirBlobStore(tmp_path, b"k")
    log = JobLog(store)
    assert (await log.end(spec().job_id)).is_over  # never was
    await log.create(spec())
    await log.append(status("running", 1.0))
    assert not (await log.end(spec().job_id)).is_over
    await store.delete_prefix(f"jobs/{spec().job_id}/")
    end = await log.end(spec().job_id)
    assert not end.exists and end.is_over


async def test_forget_stops_a_running_task_and_reads_a_failed_ones_error() -> None:
    running = asyncio.create_task(asyncio.sleep(10))
    await asyncio.sleep(0)
    forget(running)
    await asyncio.sleep(0)
    assert running.cancelled()

    async def fail() -> None:
        raise RuntimeError("not needed")

    failed = asyncio.create_task(fail())
    await asyncio.sleep(0)
    forget(failed)  # no "exception was never retrieved" at collection
    assert failed.done() and isinstance(failed.exception(), RuntimeError)


def test_job_ids_are_128_bit_random() -> None:
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100 and all(is_valid_job_id(i) for i in ids)
    assert not is_valid_job_id("../../etc")


def test_options_validation() -> None:
    options = parse_options("denoise", {"sigma": "25", "format": "jpg"})
    assert options.sigma == 25.0 and options.format == "jpeg"
    assert parse_options("denoise", {"sigma": "auto"}).sigma is None
    assert parse_options("artifacts", {"quality": "30"}).quality == 30
    assert parse_options("superres", {"ensemble": "TRUE"}).ensemble is True
    assert parse_options("artifacts", {"ensemble": "off"}).ensemble is False
    assert parse_options("denoise", {}).ensemble is False
    assert parse_options("inpaint", {"ensemble": "1"}).ensemble is True  # DeepFill, the default
    for task, fields, fragment in [
        ("", {}, "required"),
        ("blur", {}, "unknown task"),
        ("denoise", {"sigma": "-1"}, "out of range"),
        ("denoise", {"sigma": "loud"}, "not a float"),
        ("artifacts", {"quality": "95"}, "out of range"),
        ("superres", {"scale": "3"}, "scale"),
        ("denoise", {"model": "magic"}, "no model"),
        ("denoise", {"format": "gif"}, "format"),
        ("denoise", {"max_side": "2"}, "out of range"),
        ("denoise", {"ensemble": "maybe"}, "yes/no"),
        ("denoise", {"model": "classic", "ensemble": "true"}, "use model mwcnn"),
        ("inpaint", {"model": "classic", "ensemble": "1"}, "use model deepfill"),
    ]:
        with pytest.raises(InvalidRequest, match=fragment):
            parse_options(task, fields)


def test_each_task_has_a_queue() -> None:
    assert queue_for_task("artifacts").name == "restora.denoise"
    assert queue_for_task("superres").name == "restora.superres"


def test_strength_is_offered_only_with_gan_weights(tmp_path: Path) -> None:
    (tmp_path / "esrgan-psnr.safetensors").touch()
    assert parse_options("superres", {}, tmp_path).strength == 0.0
    with pytest.raises(InvalidRequest, match="needs GAN weights"):
        parse_options("superres", {"strength": "0.5"}, tmp_path)
    with pytest.raises(InvalidRequest, match="needs GAN weights"):
        parse_options("superres", {"model": "classic", "strength": "1"}, tmp_path)
    (tmp_path / "esrgan-gan.safetensors").touch()
    assert parse_options("superres", {"strength": "0.5"}, tmp_path).strength == 0.5
    with pytest.raises(InvalidRequest, match="out of range"):
        parse_options("superres", {"strength": "1.5"}, tmp_path)
