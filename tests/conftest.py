"""Shared pytest fixtures. Server fixtures start real RabbitMQ and S3 once per session.

Point the tests at servers of your own instead with RESTORA_TEST_BROKER_URL and
RESTORA_TEST_S3_ENDPOINT (+ RESTORA_TEST_S3_ACCESS_KEY / RESTORA_TEST_S3_SECRET_KEY).
A missing server program skips the tests that need it, except under CI, where it is an error.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from tests.servers import (
    RabbitMQServer,
    S3Endpoint,
    SeaweedS3Server,
    ServerBinaryMissing,
    find_epmd,
    find_rabbitmq_server,
    find_weed,
    in_ci,
)


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # `timeout` in .ci/run (or a cancelled job) sends SIGTERM, which would kill pytest
    # without teardown; as KeyboardInterrupt pytest still stops the servers it started.
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)


def _unavailable(reason: str) -> None:
    """Skip on a developer machine without the server; fail loudly in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing server is an error, not a skip)")
    pytest.skip(reason)


# Server start-up times, shown in the terminal summary so slow start-ups show in CI logs.
_startup_s: dict[str, float] = {}


def _report_startup(name: str, seconds: float | None) -> None:
    if seconds is not None:
        _startup_s[name] = seconds


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for name, seconds in _startup_s.items():
        terminalreporter.write_line(f"[servers] {name} started in {seconds:.2f}s")


@pytest.fixture(scope="session")
def server_programs() -> None:
    """For tests that start servers of their own: RabbitMQ's and `weed`'s programs are here."""
    try:
        find_rabbitmq_server()
        find_epmd()
        find_weed()
    except ServerBinaryMissing as exc:
        _unavailable(str(exc))


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitMQServer | None]:
    """The RabbitMQ node started for this test run; None when RESTORA_TEST_BROKER_URL is set."""
    if os.environ.get("RESTORA_TEST_BROKER_URL"):
        yield None
        return
    try:
        server = RabbitMQServer()
    except ServerBinaryMissing as exc:
        _unavailable(str(exc))
    with server.start():
        _report_startup("rabbitmq", server.startup_s)
        yield server


@pytest.fixture(scope="session")
def rabbitmq_url(rabbitmq_server: RabbitMQServer | None) -> str:
    """amqp:// URL of a RabbitMQ node for this test session."""
    if rabbitmq_server is None:
        return os.environ["RESTORA_TEST_BROKER_URL"]
    return rabbitmq_server.url


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Endpoint]:
    """Endpoint and credentials of an S3 server for this test session."""
    external = os.environ.get("RESTORA_TEST_S3_ENDPOINT")
    if external:
        yield S3Endpoint(
            endpoint=external,
            access_key=os.environ.get("RESTORA_TEST_S3_ACCESS_KEY", ""),
            secret_key=os.environ.get("RESTORA_TEST_S3_SECRET_KEY", ""),
            secure=os.environ.get("RESTORA_TEST_S3_SECURE", "").lower() in ("1", "true"),
        )
        return
    try:
        server = SeaweedS3Server()
    except ServerBinaryMissing as exc:
        _unavailable(str(exc))
    with server.start():
        _report_startup("seaweedfs s3", server.startup_s)
        yield server.endpoint


@pytest.fixture(scope="session", autouse=True)
def own_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The model runtime's cache (ONNX exports, backend decisions) in a folder of the session,
    for runtimes built here and services started as processes: never the user's own cache."""
    from shared.ml import backends

    folder = tmp_path_factory.mktemp("restora-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RESTORA_CACHE_DIR", str(folder))
        # Services started by the tests run PyTorch: `auto` times every network at worker start
        # (tens of seconds for x4plus), which tests/test_backends.py covers on tiny networks.
        patch.setenv("RESTORA_BACKEND", "torch")
        patch.setattr(backends, "default_cache_dir", lambda: folder)
        yield


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny convs gain nothing from threads; on a busy 2-core box two threads are ~10× slower.

    Modules of tiny-network tests opt in with `pytestmark = pytest.mark.usefixtures(...)`;
    the previous setting comes back for the other modules.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
