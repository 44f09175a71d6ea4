"""``--backend ray`` on a Ray this server starts itself: the tiny model in CPU replicas (``--replica-gpus 0``, one
torch thread each), behind the real page and queue.

One server serves the whole module (starting Ray and a replica takes tens of seconds here): it starts with
``--replicas 1:2``, and the first test's load makes Serve add the second replica, which then stays (Serve waits
10 minutes before scaling down). The tests after it run on two replicas: two jobs at once, the same pixels on
either replica and on the local backend, Stop and an API cancel reaching the replica, a replica killed mid-job.
The last test closes the server and checks the Ray it started is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from conftest import RunningServer, free_port, request_kwargs
from PIL import Image
from rawhttp import http_client, session_of, submit

# As the app does (glmimage/engine/ray.py): a Ray call that finds no Ray fails instead of starting a cluster of its
# own. Read when ray is first imported, which is here.
_auto_connect_set = "RAY_ENABLE_AUTO_CONNECT" not in os.environ
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
pytest.importorskip("ray", reason="the Ray backend needs requirements-ray.txt")
if _auto_connect_set:
    del os.environ["RAY_ENABLE_AUTO_CONNECT"]

from glmimage.config import Settings  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
LONG = 100  # steps (the most allowed) of a job stopped, cancelled or killed long before its end


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def health(server: RunningServer) -> dict[str, Any]:
    return http_client(server.url).get("/healthz").json()


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def ray_server(tiny_model_path: Path) -> Iterator[RunningServer]:
    import ray

    from glmimage.engine import ray as ray_engine
    from glmimage.web.server import launch

    assert not ray.is_initialized()
    # Serve by default reads the load every 10 s, averages it over 30 s and acts on 30 s of it, and checks a
    # replica's health every 10 s with 30 s to answer: too slow for a test.
    fast_autoscaling = {
        **ray_engine.AUTOSCALING,
        "upscale_delay_s": 1.0,
        "look_back_period_s": 2.0,
        "metrics_interval_s": 0.5,
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ray_engine, "AUTOSCALING", fast_autoscaling)
        patch.setattr(ray_engine, "HEALTH_CHECK", {"health_check_period_s": 2.0, "health_check_timeout_s": 10.0})
        settings = Settings(
            model="tiny",
            host="127.0.0.1",
            port=free_port(),
            rate_limit="0",
            max_jobs_per_client=0,
            warmup=False,
            backend="ray",
            replicas="1:2",
            replica_gpus=0,
            replica_timeout=15,  # a replica silent this long mid-job is given up
        )
        app = launch(settings, block=False)
        server = RunningServer(app, settings)
        try:
            wait_for(lambda: app.loader.state.value in ("ready", "failed"), 240, "the first replica")
            assert app.loader.state.value == "ready", app.loader.error_detail
            yield server
        finally:
            server.close()
            app.engine.close()  # the lifespan closes it too; twice is harmless


@pytest.fixture
def two_replicas(ray_server: RunningServer) -> RunningServer:
    """The server once both replicas are up (again, after a test killed one)."""
    wait_for(lambda: health(ray_server)["replicas_ready"] == 2, 240, "two replicas")
    return ray_server


@pytest.fixture(scope="module")
def local_pixels(tiny_model_path: Path, styles: Any) -> Callable[[dict[str, Any]], np.ndarray]:
    """The picture the local backend draws for a request, with one torch thread as a replica has (float32 sums
    split over other thread counts differ in the last bit, and a few pixels by one level)."""
    import torch

    from glmimage.engine import LocalEngine
    from glmimage.models.loading import PipelineLoader
    from glmimage.requests import validate_request

    engine = LocalEngine(PipelineLoader("tiny", "float32", warmup=False).start(), styles, 1)
    drawn: dict[str, np.ndarray] = {}

    def draw(values: dict[str, Any]) -> np.ndarray:
        key = repr(sorted(values.items()))
        if key in drawn:
            return drawn[key]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # for this thread, which runs the pipeline here
        try:
            result = engine.generate(validate_request(styles, **values))
        finally:
            torch.set_num_threads(threads)
        drawn[key] = np.asarray(result.images[0].convert("RGB"))
        return drawn[key]

    yield draw
    engine.close()


def running_job(server: RunningServer, steps: int = 1) -> dict[str, Any]:
    """The one job running on a replica, once it has done ``steps`` steps."""
    return wait_for(
        lambda: next((job for job in server.app.engine.running() if job["steps"] >= steps), None),
        120,
        f"a job at step {steps}",
    )


def steps_run_by(server: RunningServer, worker: str) -> int:
    """How many steps the replica ``worker`` has run so far, read from the counters it sends when a job starts on
    it: two short jobs at once take both replicas, so one of them starts there."""
    before = dict(server.app.engine.replicas_seen())

    def one() -> None:
        server.client().predict(**request_kwargs(), api_name="/generate")

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    seen = server.app.engine.replicas_seen()[worker]
    assert seen["jobs_run"] > before[worker]["jobs_run"], "no job started on that replica"
    return seen["steps_run"]


def test_under_load_serve_adds_the_second_replica(ray_server):
    body = health(ray_server)
    assert (body["replicas_min"], body["replicas_max"]) == (1, 2)
    assert body["replicas_ready"] == 1
    # The queue runs two jobs at once (the most replicas): the second waits in Serve's queue, and that demand is
    # what makes Serve add a replica.
    clients = [ray_server.client() for _ in range(3)]
    jobs = [c.submit(**request_kwargs(num_inference_steps=40), api_name="/generate") for c in clients]
    wait_for(lambda: health(ray_server)["replicas_wanted"] == 2, 120, "Serve to want a second replica")
    wait_for(lambda: health(ray_server)["replicas_ready"] == 2, 240, "the second replica")
    assert all(job.result(timeout=240)[2]["worker"].startswith("ray:") for job in jobs)


def test_two_jobs_at_once_run_on_two_replicas_at_the_same_time(two_replicas):
    server = two_replicas
    jobs = [c.submit(**request_kwargs(num_inference_steps=30), api_name="/generate") for c in (server.client(),) * 2]
    both = wait_for(lambda: len(server.app.engine.running()) == 2 and server.app.engine.running(), 120, "two jobs")
    assert len({job["pid"] for job in both}) == 2  # running at once, in two processes
    workers = {job.result(timeout=120)[2]["worker"] for job in jobs}
    assert workers == {job["name"] for job in both}


def test_the_same_seed_gives_the_same_pixels_on_either_replica_and_on_the_local_backend(two_replicas, local_pixels):
    server = two_replicas
    values = request_kwargs(seed=4321, num_inference_steps=6)
    results: list[Any] = [None, None]

    def one(i: int) -> None:
        results[i] = server.client().predict(**values, api_name="/generate")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    (images_a, seed_a, details_a), (images_b, seed_b, details_b) = results
    assert details_a["worker"] != details_b["worker"]
    assert seed_a == seed_b == 4321
    a, b = pixels(images_a[0]["image"]), pixels(images_b[0]["image"])
    assert np.array_equal(a, b)
    assert np.array_equal(a, local_pixels(values))


def test_stop_ends_the_job_on_its_replica_within_a_few_steps(two_replicas):
    server = two_replicas
    client = server.client()
    client.predict(**request_kwargs(), api_name="/generate")
    session = session_of(server.app.demo, client.session_hash)
    job = client.submit(**request_kwargs(num_inference_steps=LONG), api_name="/generate")
    running = running_job(server, steps=2)
    before = server.app.engine.replicas_seen()[running["name"]]["steps_run"]
    session.stop_requested_at = time.monotonic()  # what the Stop button does
    job.result(timeout=120)
    assert session.log[-1]["event"] == "stopped"
    assert steps_run_by(server, running["name"]) - before < 20  # of 100 asked


def test_a_visitor_who_disconnects_ends_the_job_on_its_replica_within_a_few_steps(two_replicas):
    server = two_replicas
    leaver = http_client(server.url)
    response = submit(leaver, request_kwargs(num_inference_steps=LONG))
    with leaver.stream("GET", f"/gradio_api/call/generate/{response.json()['event_id']}"):
        running = running_job(server, steps=2)
        before = server.app.engine.replicas_seen()[running["name"]]["steps_run"]
    leaver.close()
    wait_for(lambda: not server.app.engine.running(), 60, "the job to end")
    assert steps_run_by(server, running["name"]) - before < 20  # of 100 asked


def test_a_cancelled_api_job_ends_on_its_replica_within_a_few_steps(two_replicas):
    server = two_replicas
    job = server.client().submit(**request_kwargs(num_inference_steps=LONG), api_name="/generate")
    running = running_job(server, steps=2)
    before = server.app.engine.replicas_seen()[running["name"]]["steps_run"]
    job.cancel()
    wait_for(lambda: not server.app.engine.running(), 60, "the job to end")
    assert steps_run_by(server, running["name"]) - before < 20  # of 100 asked


def test_a_replica_killed_mid_job_hands_the_job_to_the_other_with_the_same_seed(two_replicas, local_pixels):
    server = two_replicas
    values = request_kwargs(seed=777, num_inference_steps=40)
    job = server.client().submit(**values, api_name="/generate")
    victim = running_job(server, steps=2)
    os.kill(victim["pid"], signal.SIGKILL)
    images, seed, details = job.result(timeout=180)
    assert details["worker"] != victim["name"] and seed == 777
    assert np.array_equal(pixels(images[0]["image"]), local_pixels(values))  # the same picture, from the other
    # The server goes on serving, and Serve replaces the dead replica.
    assert server.client().predict(**request_kwargs(), api_name="/generate")[2]["worker"].startswith("ray:")
    wait_for(lambda: health(server)["replicas_ready"] == 2, 240, "Serve to replace the replica")
    ready = http_client(server.url).get("/readyz")
    assert ready.status_code == 200 and ready.json()["replicas_ready"] == 2


def test_a_replica_that_hangs_mid_job_is_given_up_its_job_moved_and_serve_ends_it(two_replicas, local_pixels):
    server = two_replicas
    values = request_kwargs(seed=777, num_inference_steps=40)
    job = server.client().submit(**values, api_name="/generate")
    victim = running_job(server, steps=2)
    os.kill(victim["pid"], signal.SIGSTOP)  # alive but silent, as a replica stuck in a GPU call
    try:
        images, seed, details = job.result(timeout=180)  # after --replica-timeout (15 s) of silence
        assert details["worker"] != victim["name"] and seed == 777
        assert np.array_equal(pixels(images[0]["image"]), local_pixels(values))
        # Serve's health check gets no answer, so it ends the replica (and starts another, as after the kill above).
        wait_for(lambda: not alive(victim["pid"]), 120, "Serve to end the hung replica")
        assert server.client().predict(**request_kwargs(), api_name="/generate")[2]["worker"].startswith("ray:")
    finally:
        if alive(victim["pid"]):
            os.kill(victim["pid"], signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_closing_the_server_shuts_down_the_ray_it_started(ray_server):
    import ray

    assert ray.is_initialized()
    ray_server.close()
    ray_server.app.engine.close()
    assert not ray.is_initialized()
    assert "RAY_AUTH_TOKEN" not in os.environ  # the token of that Ray went with it


def test_the_local_backend_never_imports_ray(tiny_model_path):
    code = (
        "import sys\n"
        "from glmimage.config import load_settings\n"
        "from glmimage.web.server import create_app\n"
        "app = create_app(load_settings(['--model', 'tiny', '--no-warmup']))\n"
        "app.loader.wait(120)\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
