"""The app as an operator runs it (``python app.py`` in its own process, HOME, working directory and temporary
folders of its own): the server log holds no prompt text unless --log-prompts is given, nothing is written
outside Gradio's temporary folder, and at shutdown (SIGTERM as from docker/systemd, or Ctrl-C) the generated files
are deleted.

The tiny model is read from GLMIMAGE_CACHE_DIR, pointed at the copy this test run built: that folder is the model
cache (like the Hugging Face hub cache), written once when the model is first fetched or built, never per visitor.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import free_port, request_kwargs
from gradio_client import Client
from gradio_client.exceptions import ValidationError

APP = Path(__file__).resolve().parents[1] / "app.py"
CANARIES = ("canary-prompt-7f3a violet giraffe", "canary-negative-91b", "隐私金丝雀提示词")


@dataclass
class Run:
    """One ``app.py`` process and the folders it was given; ``output`` is its stdout and stderr once stopped."""

    process: subprocess.Popen
    url: str
    home: Path
    cwd: Path
    tmp: Path
    gradio_tmp: Path
    output: str = ""
    image_paths: tuple[Path, ...] = ()
    files_before_stop: tuple[Path, ...] = ()
    analytics_enabled: bool | None = None
    outbound: list[bytes] | None = None

    def files_under(self, folder: Path) -> list[Path]:
        return [p for p in folder.rglob("*") if not p.is_dir()]


class ProxyTrap:
    """A local port given to the app as its HTTP(S) proxy: every outbound request made through a proxy-honouring
    client (httpx, requests, urllib: Gradio's analytics and version check, the Hugging Face hub) arrives here."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.requests: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(2)
                try:
                    self.requests.append(connection.recv(200))
                except OSError as exc:
                    self.requests.append(repr(exc).encode())

    def close(self) -> None:
        self.socket.close()


def start(root: Path, tiny_model_path: Path, proxy: ProxyTrap, *flags: str, **extra_env: str) -> Run:
    home, cwd, tmp, gradio_tmp = (root / name for name in ("home", "cwd", "tmp", "gradio"))
    for folder in (home, cwd, tmp, gradio_tmp):
        folder.mkdir()
    # Only what an operator would set. No HF_HUB_OFFLINE: with a local model nothing needs the network, so
    # nothing may try.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GRADIO_", "GLMIMAGE_", "XDG_", "HF_")) and not k.lower().endswith("_proxy")
    }
    env.update(
        HOME=str(home),
        TMPDIR=str(tmp),
        GRADIO_TEMP_DIR=str(gradio_tmp),
        GLMIMAGE_CACHE_DIR=str(tiny_model_path.parent),
        PYTHONDONTWRITEBYTECODE="1",
        HTTP_PROXY=proxy.url,
        HTTPS_PROXY=proxy.url,
        ALL_PROXY=proxy.url,
        NO_PROXY="127.0.0.1,localhost",
        **extra_env,
    )
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(APP), "--model", "tiny", "--port", str(port), "--no-warmup", *flags],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
    )
    return Run(process, f"http://127.0.0.1:{port}/", home, cwd, tmp, gradio_tmp)


def wait_ready(run: Run, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert run.process.poll() is None, run.process.communicate()[0]
        try:
            if httpx.get(run.url + "healthz", timeout=2).json()["model_state"] == "ready":
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    raise AssertionError("app.py did not become ready")


def visit(run: Run) -> Client:
    """What a visitor does: two generations (English with a negative prompt, Chinese with a style) and a
    refused request, every one with a prompt that must not reach the log."""
    client = Client(run.url, verbose=False, download_files=False)
    first, *_ = client.predict(
        **request_kwargs(prompt=CANARIES[0], negative_prompt=CANARIES[1], num_inference_steps=1), api_name="/generate"
    )
    second, *_ = client.predict(
        **request_kwargs(prompt=CANARIES[2], style="photographic", num_inference_steps=1), api_name="/generate"
    )
    with pytest.raises(ValidationError):
        client.predict(**request_kwargs(prompt=CANARIES[0], width=100), api_name="/generate")
    run.image_paths = tuple(Path(item["image"]["path"]) for item in first + second)
    return client


@pytest.fixture(scope="module")
def runs(tiny_model_path, tmp_path_factory) -> dict[str, Run]:
    """The defaults (stopped with SIGTERM) and --log-prompts (stopped with Ctrl-C), started side by side, each
    given a proxy that records any outbound request."""
    proxy = ProxyTrap()
    with pytest.raises(httpx.HTTPError):  # the trap answers nothing, but it does catch a proxied request
        httpx.get("http://example.invalid/", proxy=proxy.url, timeout=3)
    assert proxy.requests and proxy.requests[0].startswith(b"GET http://example.invalid/")
    proxy.requests.clear()
    runs = {
        "default": start(tmp_path_factory.mktemp("default"), tiny_model_path, proxy),
        # An operator who left Gradio's analytics switched on: the app keeps them off anyway.
        "log_prompts": start(
            tmp_path_factory.mktemp("log_prompts"),
            tiny_model_path,
            proxy,
            "--log-prompts",
            GRADIO_ANALYTICS_ENABLED="True",
        ),
    }
    try:
        clients = []
        for run in runs.values():
            wait_ready(run)
            run.analytics_enabled = httpx.get(run.url + "config", timeout=30).json()["analytics_enabled"]
            clients.append(visit(run))
            run.files_before_stop = tuple(p for p in run.image_paths if p.exists())
        runs["default"].process.send_signal(signal.SIGTERM)
        runs["log_prompts"].process.send_signal(signal.SIGINT)
        for run in runs.values():
            run.output = run.process.communicate(timeout=60)[0]
        for client in clients:
            client.close()
    finally:
        proxy.close()
        for run in runs.values():
            run.outbound = proxy.requests
        for run in runs.values():
            if run.process.poll() is None:
                run.process.kill()
                run.output += run.process.communicate()[0]
    return runs


def test_by_default_the_server_log_never_contains_prompt_text(runs):
    run = runs["default"]
    assert "generated 1 image(s)" in run.output and "refused request" in run.output  # the log did record events
    for canary in CANARIES:
        assert canary not in run.output


def test_with_log_prompts_the_prompts_are_in_the_server_log(runs):
    run = runs["log_prompts"]
    assert all(canary in run.output for canary in CANARIES)


@pytest.mark.parametrize("name", ["default", "log_prompts"])
def test_images_are_written_only_inside_gradios_temporary_folder_and_deleted_at_shutdown(runs, name):
    run = runs[name]
    assert run.process.returncode == 0, run.output[-2000:]
    assert len(run.files_before_stop) == 2
    assert all(p.is_relative_to(run.gradio_tmp) and p.suffix == ".png" for p in run.image_paths)
    assert run.files_under(run.gradio_tmp) == []


@pytest.mark.parametrize("name", ["default", "log_prompts"])
def test_nothing_is_written_to_home_the_working_directory_or_the_system_temp_folder(runs, name):
    run = runs[name]
    assert list(run.home.iterdir()) == []
    assert list(run.cwd.iterdir()) == []  # no .gradio/, no cached examples, no output folder, no flagged data
    assert run.files_under(run.tmp) == []


def test_analytics_stay_off_whatever_gradios_setting_and_no_request_leaves_the_machine(runs):
    assert runs["default"].analytics_enabled is False and runs["log_prompts"].analytics_enabled is False
    assert runs["default"].outbound == []  # made by either run, from start to shutdown
