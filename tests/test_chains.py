"""Chains of fixes (`task=artifacts,denoise,superres`): the rules, the messages, the cost, and
end to end in the embedded stack."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from skimage import data

from services.gateway.validation import InvalidRequest, parse_options
from services.preprocess.service import PreprocessService
from shared.errors import UnprocessableInput
from shared.ml import chains, cost, registry
from shared.platform import messages, topology
from shared.platform.config import PreprocessSettings
from shared.platform.messages import JobOptions, RestoreRequested
from shared.platform.model_service import ModelService, RestoreInput, RestoreOutput
from tests.pipeline_helpers import decode_image, jpeg_bytes, png_bytes
from tests.stack import ADMIN, download, follow_events, running_stack, submit, wait_for_state

WEIGHTS = registry.SHIPPED_WEIGHTS_DIR


def models_for(task: str) -> list[str]:
    return registry.models_for(task, WEIGHTS)


# ------------------------------------------------------------------------------ the rules


@pytest.mark.parametrize(
    ("task", "rule"),
    [
        ("denoise,denoise", "repeats no step: denoise"),
        ("superres,denoise", "superres comes last"),
        ("denoise,artifacts", "artifacts comes before denoise"),
        ("denoise,inpaint", "inpaint comes first"),
        ("inpaint,artifacts,denoise,superres,superres", "at most 4 steps; 5 were given"),
        ("denoise,sharpen", "unknown task 'sharpen'"),
        ("", "the form field 'task' is required"),
    ],
)
def test_each_rule_is_a_400_that_names_it(task: str, rule: str) -> None:
    with pytest.raises(chains.ChainError, match=rule):
        chains.validate_chain(task)
    with pytest.raises(InvalidRequest, match=rule) as caught:
        parse_options(task or ",", {}, WEIGHTS)
    assert caught.value.status == 400


def test_inpaint_is_a_step_only_with_a_mask() -> None:
    assert chains.validate_chain("inpaint,denoise", has_mask=True) == ("inpaint", "denoise")
    with pytest.raises(chains.ChainError, match="inpaint needs a 'mask'"):
        chains.validate_chain("inpaint,denoise", has_mask=False)


def test_sensible_chains_are_accepted() -> None:
    assert chains.validate_chain("artifacts, denoise ,superres") == (
        "artifacts", "denoise", "superres")
    assert chains.validate_chain("inpaint,artifacts,denoise,superres") == (
        "inpaint", "artifacts", "denoise", "superres")
    assert chains.validate_chain("denoise") == ("denoise",)


def test_models_per_step_or_one_name_where_it_applies() -> None:
    steps = ("artifacts", "denoise", "superres")
    defaults = {s: models_for(s)[0] for s in steps}
    assert chains.parse_models("", steps, models_for) == defaults
    assert chains.parse_models("classic", steps, models_for) == dict.fromkeys(steps, "classic")
    assert chains.parse_models("denoise:classic", steps, models_for) == {
        **defaults, "denoise": "classic"}
    with pytest.raises(chains.ChainError, match="names step 'inpaint', which is not in the chain"):
        chains.parse_models("inpaint:classic", steps, models_for)
    with pytest.raises(chains.ChainError, match="task 'denoise' has no model 'nope'"):
        chains.parse_models("denoise:nope", steps, models_for)
    with pytest.raises(chains.ChainError, match="no step of the chain has a model 'nope'"):
        chains.parse_models("nope", steps, models_for)


def test_options_of_a_chain() -> None:
    options = parse_options("artifacts,denoise,superres", {"model": "denoise:classic"}, WEIGHTS)
    assert options.models["denoise"] == "classic"
    assert options.model == options.models["artifacts"]
    assert options.for_step("denoise").model == "classic"
    single = parse_options("denoise", {"model": "classic"}, WEIGHTS)
    assert single.models == {} and single.for_step("denoise") is single


# ------------------------------------------------------------------------------ messages


def test_an_old_single_task_message_still_decodes_and_a_new_one_reads_the_same() -> None:
    old = {"type": "restore.requested", "version": 1, "body": {
        "job_id": "a" * 32, "task": "denoise", "input_key": "k",
        "options": {"model": "classic", "sigma": 10.0}}}
    request = messages.decode(json.dumps(old).encode())
    assert isinstance(request, RestoreRequested)
    assert request.steps == [] and request.step == 0 and request.is_last_step
    body = json.loads(messages.encode(request))["body"]
    assert "steps" not in body and "step" not in body and "models" not in body["options"]
    chained = RestoreRequested("a" * 32, "denoise", JobOptions("classic", models={
        "artifacts": "classic", "denoise": "classic"}), "k", steps=["artifacts", "denoise"], step=1)
    assert messages.decode(messages.encode(chained)) == chained


def test_a_chain_costs_the_sum_of_its_steps() -> None:
    steps = [registry.find(t, "classic") for t in ("artifacts", "denoise", "superres")]
    restorers = [r for r in steps if r is not None]
    shape = cost.JobShape((1000, 1000), scale=4)
    parts = [cost.estimate(r, shape).units for r in restorers]
    assert cost.estimate(restorers, shape).units == pytest.approx(sum(parts))


# ------------------------------------------------------------------------------ end to end


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=ADMIN) as client:
        yield client


async def test_a_three_step_chain_end_to_end(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    photo = data.astronaut()[::4, ::4][:48, :64]
    async with running_stack(tmp_path) as stack:
        status, body = await submit(session, stack.url, jpeg_bytes(photo, 25),
                                    "artifacts,denoise,superres", model="classic")
        assert status == 202, body
        events = await follow_events(session, stack.url, body["id"])
        assert events[-1]["state"] == "done", events
        owner = {"Authorization": f"Bearer {body['owner_token']}"}
        async with session.get(stack.url + body["status_url"], headers=owner) as response:
            doc = await response.json()
        result = decode_image(await download(session, stack.url, doc["result_url"]))
    assert result.shape == (192, 256, 3)
    assert doc["task"] == "artifacts,denoise,superres"
    steps = ["artifacts", "denoise", "superres"]
    assert doc["steps"] == steps
    assert [doc["stages"][s] for s in steps] == sorted(doc["stages"][s] for s in steps)
    assert doc["stages"]["artifacts"] <= doc["stages"]["done"]
    for step in steps:
        assert doc["timings"][step]["inference_s"] >= 0
    assert {"gateway", "preprocess"} <= set(doc["timings"])
    assert doc["models"] == dict.fromkeys(steps, "classic")
    assert doc["output"] == {**doc["output"], "width": 256, "height": 192}
    named = [e["step"]["name"] for e in events if "step" in e]
    assert list(dict.fromkeys(named)) == steps  # every step announced, in order
    running = [e for e in events if e["state"] == "running"]
    progress = [e["progress"] for e in running if e.get("progress") is not None]
    assert progress == sorted(progress) and {0.3333, 0.6667} <= set(progress)
    assert progress == sorted(progress)


class _FakeSteps:
    """Restorers for the chain tests: the artifacts step waits to be released."""

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.ran: list[str] = []
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, job: RestoreInput) -> RestoreOutput:
        self.ran.append(job.task)
        if job.task == "artifacts":
            self.started.set()
            self.release.wait(30)
        if job.task == self.fail:
            raise UnprocessableInput("this step cannot run")
        return RestoreOutput(job.pixels, f"fake-{job.task}")


async def _start_fakes(stack: object, fakes: _FakeSteps) -> None:
    bus, store = stack.bus, stack.store  # type: ignore[attr-defined]
    await PreprocessService(bus, store, PreprocessSettings()).start()
    for queue in (topology.DENOISE, topology.SUPERRES):
        await ModelService(queue.service, queue, fakes, bus, store).start()


async def test_a_cancelled_chain_stops(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    fakes = _FakeSteps()
    async with running_stack(tmp_path, workers=False) as stack:
        await _start_fakes(stack, fakes)
        status, body = await submit(session, stack.url, png_bytes(data.camera()[:64, :64]),
                                    "artifacts,denoise,superres", quality="30", sigma="10")
        assert status == 202, body
        assert await asyncio.to_thread(fakes.started.wait, 30)
        async with session.delete(f"{stack.url}/api/v1/jobs/{body['id']}") as response:
            assert (await response.json())["state"] == "cancelled"
        fakes.release.set()
        await asyncio.sleep(1.5)
    assert fakes.ran == ["artifacts"]


async def test_a_failing_step_fails_the_job_naming_itself(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    fakes = _FakeSteps(fail="denoise")
    fakes.release.set()
    async with running_stack(tmp_path, workers=False) as stack:
        await _start_fakes(stack, fakes)
        status, body = await submit(session, stack.url, png_bytes(data.camera()[:64, :64]),
                                    "artifacts,denoise,superres", quality="30", sigma="10")
        assert status == 202, body
        doc = await wait_for_state(session, stack.url, body["id"], {"done", "failed"})
    assert doc["state"] == "failed"
    assert "step 2 of 3 (denoise) failed: this step cannot run" in doc["error"]
    assert fakes.ran == ["artifacts", "denoise"]
    assert doc["stages"]["artifacts"] <= doc["stages"]["denoise"]
