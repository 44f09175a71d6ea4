"""``--ray-address``: the app joins a cluster started with ``ray start --head`` with token authentication on, as the
README tells a lab to run one, and leaves it running when it exits; a driver without the token is refused.

The cluster runs on this machine (Ray binds the machine's own network address, never loopback; no other host is
addressed), in a process group of its own that the module stops at the end, whatever happened.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import free_port, request_kwargs
from rawhttp import call, http_client

# Not imported here: tests/test_ray_backend.py imports Ray first, with the settings the app imports it with.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="the Ray backend needs requirements-ray.txt"
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))  # the CLI of the Ray this Python runs
SECRET_PROMPT = "a lighthouse painted by xyzzy-cluster-secret"


@dataclass
class Cluster:
    address: str  # HOST:PORT of its head
    env: dict[str, str]  # with the token: what a machine of the lab has
    logs: Path  # the cluster's own log folder (its replicas' output included)


def without_token(env: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if not name.startswith("RAY_AUTH")}


def stop_group(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the process (``ray start --block`` then stops what it started), SIGKILL to its group if it has
    not ended in time. The group holds only what this module started."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # leftovers of that group only
    except ProcessLookupError:
        pass
    process.wait(30)


@pytest.fixture(scope="module")
def token_cluster(tiny_model_path: Path) -> Iterator[Cluster]:
    home = Path(tempfile.mkdtemp(prefix="rayhome"))  # no ~/.ray/auth_token of this machine's to fall back on
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths live under it
    token = secrets.token_hex(32)
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    port = free_port()
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        node_ip = wait_for_head(head)
        yield Cluster(f"{node_ip}:{port}", env, temp / "session_latest" / "logs")
    finally:
        stop_group(head, grace_s=15)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(temp, ignore_errors=True)


def wait_for_head(head: subprocess.Popen, timeout: float = 180) -> str:
    """The node's address, once ``ray start`` says the runtime started."""
    found: dict[str, str] = {}
    lines: list[str] = []

    def read() -> None:
        for raw in head.stdout:
            line = re.sub(r"\x1b\[[0-9;]*m", "", raw)  # its colours
            lines.append(line)
            if "Local node IP:" in line:
                found["ip"] = line.rsplit(":", 1)[1].strip()
            if "Ray runtime started" in line:
                found["started"] = "yes"

    threading.Thread(target=read, daemon=True).start()  # keeps draining its output while the tests run
    deadline = time.monotonic() + timeout
    while "started" not in found:
        assert head.poll() is None and time.monotonic() < deadline, "".join(lines[-30:])
        time.sleep(0.2)
    return found["ip"]


def driver(cluster: Cluster, env: dict[str, str], code: str) -> subprocess.Popen:
    """A Python driver that joins the cluster, then runs ``code``."""
    program = f"import ray\nray.init(address={cluster.address!r})\nprint('joined')\n{code}"
    return subprocess.Popen(
        [sys.executable, "-c", program], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_a_driver_without_the_token_or_with_another_is_refused(token_cluster):
    drivers = [
        driver(token_cluster, without_token(token_cluster.env), ""),
        driver(token_cluster, {**token_cluster.env, "RAY_AUTH_TOKEN": secrets.token_hex(32)}, ""),
    ]
    for process in drivers:  # side by side: each takes Ray ~20 s of retries to give up
        output, _ = process.communicate(timeout=180)
        assert process.returncode != 0 and "joined" not in output
        assert "Failed to connect to Ray cluster" in output, output[-2000:]


def start_app(cluster: Cluster, port: int, log: Path, model: str = "tiny") -> subprocess.Popen:
    """``python app.py --backend ray --ray-address HOST:PORT``, with the token in its environment."""
    return subprocess.Popen(
        [
            *(sys.executable, "app.py", "--model", model, "--no-warmup", "--rate-limit", "0", "--port", str(port)),
            *("--backend", "ray", "--ray-address", cluster.address, "--replicas", "1", "--replica-gpus", "0"),
        ],
        cwd=REPO_ROOT,
        env={**cluster.env, "PYTHONUNBUFFERED": "1"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_the_app_joins_with_the_token_serves_and_leaves_the_cluster_running(token_cluster, tmp_path):
    port = free_port()
    app = start_app(token_cluster, port, tmp_path / "app.log")
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while not ready(url):
            assert app.poll() is None and time.monotonic() < deadline, (tmp_path / "app.log").read_text()[-3000:]
            time.sleep(0.5)
        outcome = call(http_client(url), request_kwargs(prompt=SECRET_PROMPT))
        assert outcome.kind == "image", outcome.body[-2000:]
        details = outcome.data[2]
        assert details["worker"].startswith("ray:") and details["worker"].endswith(":cpu")
        body = http_client(url).get("/healthz").json()
        assert (body["replicas_ready"], body["replicas_wanted"]) == (1, 1)
    finally:
        stop_group(app, grace_s=60)  # SIGTERM: the app's own shutdown, as docker stop or systemd does
    assert app.returncode == 0, (tmp_path / "app.log").read_text()[-3000:]
    # Nothing of the visitor's in the logs: the app's, or the cluster's (where the replicas write theirs).
    app_log = (tmp_path / "app.log").read_text()
    assert "ray backend closed" in app_log and "the cluster left running" in app_log
    assert SECRET_PROMPT not in app_log
    for path in token_cluster.logs.rglob("*"):
        if path.is_file():
            assert SECRET_PROMPT not in path.read_text(errors="replace"), path
    # The replica ran the code the app sent with the job (a machine of the cluster needs no copy of the app).
    shipped = token_cluster.logs.parent / "runtime_resources" / "py_modules_files"
    assert list(shipped.rglob("glmimage/engine/ray.py")), "the glmimage package was not sent with the job"
    # The cluster is still up, and the app took its replicas with it.
    check = driver(
        token_cluster, token_cluster.env, "from ray import serve\nprint('apps', sorted(serve.status().applications))"
    )
    output, _ = check.communicate(timeout=180)
    assert check.returncode == 0, output[-2000:]
    assert "apps []" in output


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_model_the_replicas_cannot_load_is_reported_and_the_server_stays_up(token_cluster, tmp_path):
    port = free_port()
    app = start_app(token_cluster, port, tmp_path / "app.log", model=str(tmp_path / "no-such-model"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while (body := health_of(url)) is None or body["model_state"] != "failed":
            assert app.poll() is None and time.monotonic() < deadline, (tmp_path / "app.log").read_text()[-3000:]
            time.sleep(0.5)
        assert body["status"] == "degraded" and body["replicas_ready"] == 0
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 503
        outcome = call(http_client(url), request_kwargs())
        assert outcome.kind == "error"
        assert outcome.error.startswith("The model is not available: the model folder was not found")
    finally:
        stop_group(app, grace_s=60)


def health_of(url: str) -> dict | None:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
