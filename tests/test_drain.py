"""Graceful restarts: on SIGTERM ``python app.py`` stops taking generations, lets the running and queued ones
finish within --drain-timeout, refuses new ones with a "restarting" message, deletes its files and exits 0; a job
longer than the drain time is stopped at its next step and the process still exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import free_port, request_kwargs
from gradio_client import Client
from gradio_client.exceptions import AppError, ValidationError
from prometheus_client.parser import text_string_to_metric_families

APP = Path(__file__).resolve().parents[1] / "app.py"
# Bounds on waiting, not measurements: a loaded 2-core machine is slow, a healthy one far quicker.
START_TIMEOUT_S = 120
EXIT_TIMEOUT_S = 90


@dataclass
class AppProcess:
    process: subprocess.Popen
    url: str
    gradio_tmp: Path
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def gauge(self, name: str) -> float:
        text = httpx.get(self.url + "metrics", timeout=10).text
        return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


@pytest.fixture
def start_app(tiny_model_path, tmp_path) -> Iterator[Callable[..., AppProcess]]:
    started: list[AppProcess] = []

    def start(*flags: str) -> AppProcess:
        gradio_tmp = tmp_path / f"gradio-{len(started)}"
        gradio_tmp.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GRADIO_", "GLMIMAGE_"))}
        env.update(
            GRADIO_TEMP_DIR=str(gradio_tmp),
            GLMIMAGE_CACHE_DIR=str(tiny_model_path.parent),
            GRADIO_ANALYTICS_ENABLED="False",
            HF_HUB_OFFLINE="1",
        )
        port = free_port()
        log_path = tmp_path / f"app-{len(started)}.log"
        with open(log_path, "w", encoding="utf-8") as log:
            process = subprocess.Popen(
                [sys.executable, str(APP), "--model", "tiny", "--port", str(port), "--no-warmup", "--rate-limit", "0"]
                + ["--max-jobs-per-client", "0", *flags],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        app = AppProcess(process, f"http://127.0.0.1:{port}/", gradio_tmp, log_path)
        started.append(app)
        wait_for(lambda: ready(app), START_TIMEOUT_S, "app.py did not become ready", app)
        return app

    yield start
    for app in started:
        if app.process.poll() is None:
            app.process.kill()
            app.process.wait()


def ready(app: AppProcess) -> bool:
    assert app.process.poll() is None, app.log[-3000:]
    try:
        return httpx.get(app.url + "readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(condition: Callable[[], bool], timeout: float, message: str, app: AppProcess) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{message}\n{app.log[-3000:]}"
        time.sleep(0.1)


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if not p.is_dir()]


def test_sigterm_lets_the_running_and_the_queued_job_finish_refuses_new_ones_and_exits_clean(start_app):
    app = start_app("--drain-timeout", "120")
    running_client, queued_client = Client(app.url, verbose=False), Client(app.url, verbose=False)
    running = running_client.submit(
        **request_kwargs(prompt="running when SIGTERM comes", num_inference_steps=30), api_name="/generate"
    )
    wait_for(lambda: app.gauge("glmimage_busy_workers") == 1, 60, "the long job did not start", app)
    queued = queued_client.submit(**request_kwargs(prompt="queued when SIGTERM comes"), api_name="/generate")
    wait_for(lambda: app.gauge("glmimage_queue_length") == 1, 60, "the second job did not queue", app)

    app.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    wait_for(lambda: httpx.get(app.url + "readyz", timeout=5).status_code == 503, 30, "/readyz stayed 200", app)
    assert httpx.get(app.url + "readyz", timeout=5).json()["reasons"][0] == "shutting_down"
    with pytest.raises(ValidationError, match="The server is restarting"):
        Client(app.url, verbose=False).predict(**request_kwargs(prompt="arrives too late"), api_name="/generate")

    for job, client in ((running, running_client), (queued, queued_client)):
        images, seed, _details = job.result(timeout=EXIT_TIMEOUT_S)
        assert len(images) == 1 and Path(images[0]["image"]).stat().st_size > 0  # fetched before the server left
        assert seed == request_kwargs()["seed"]
        client.close()
    assert app.process.wait(timeout=EXIT_TIMEOUT_S) == 0, app.log[-3000:]
    print(f"SIGTERM to exit with 1 running and 1 queued job: {time.monotonic() - signalled:.1f} s")
    assert files_under(app.gradio_tmp) == []
    assert "1 running and 1 queued may finish" in app.log and "drain time spent" not in app.log


def test_a_job_longer_than_the_drain_time_is_stopped_and_the_process_still_exits_0(start_app):
    app = start_app("--drain-timeout", "1")
    client = Client(app.url, verbose=False)
    job = client.submit(
        **request_kwargs(prompt="longer than the drain", num_inference_steps=100), api_name="/generate"
    )
    wait_for(lambda: app.gauge("glmimage_busy_workers") == 1, 60, "the long job did not start", app)
    app.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    with pytest.raises(AppError, match="The server is restarting"):
        job.result(timeout=EXIT_TIMEOUT_S)
    client.close()
    assert app.process.wait(timeout=EXIT_TIMEOUT_S) == 0, app.log[-3000:]
    print(f"SIGTERM to exit with a job longer than --drain-timeout 1: {time.monotonic() - signalled:.1f} s")
    assert "drain time spent: stopping 1 running generation(s) at their next step" in app.log
    assert "generated 1 image" not in app.log  # it was stopped, not finished
    assert files_under(app.gradio_tmp) == []
