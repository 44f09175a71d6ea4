"""Shared fixtures: the tiny model, built once per test run, and a real GLM Image server on a free port."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Every test run writes Gradio's temporary files (and builds the tiny model) in folders of its own, so tests can
# check what was written; the folders go when the run ends.
for _name, _prefix in (("GRADIO_TEMP_DIR", "glmimage-test-gradio-"), ("GLMIMAGE_CACHE_DIR", "glmimage-test-cache-")):
    if not os.environ.get(_name):
        os.environ[_name] = tempfile.mkdtemp(prefix=_prefix)
        atexit.register(shutil.rmtree, os.environ[_name], True)

import pytest  # noqa: E402

from glmimage.config import Settings  # noqa: E402
from glmimage.models.tiny import ensure_tiny_model  # noqa: E402
from glmimage.styles import StyleBook, load_styles  # noqa: E402

# The size and step count every end-to-end test uses: real code on the tiny model, fast on a CPU.
SMALL = dict(width=512, height=512, num_inference_steps=2)


def run_async(coroutine: Any) -> Any:
    """Run a coroutine to its end on a thread of its own: the browser tests of the same run keep Playwright's event
    loop running on the main thread, where ``asyncio.run`` refuses to start."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def files_in(root: Path) -> dict[Path, bytes]:
    """Every file under ``root`` with its bytes. Servers of other tests clear their sessions' folders while this
    walks, so a file or folder that vanishes in between is passed over (``os.walk`` skips folders it cannot list)."""
    found = {}
    for folder, _, names in os.walk(root):
        for path in (Path(folder) / name for name in names):
            with contextlib.suppress(FileNotFoundError):
                found[path] = path.read_bytes()
    return found


def copies_of(data: bytes) -> list[Path]:
    """Every file under Gradio's temporary folder with exactly these bytes."""
    return [path for path, found in files_in(Path(os.environ["GRADIO_TEMP_DIR"])).items() if found == data]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request_kwargs(**overrides: Any) -> dict[str, Any]:
    """A valid /generate call (tiny, fast), with some fields changed."""
    values: dict[str, Any] = dict(
        prompt="a red apple on a wooden table",
        negative_prompt="",
        style="none",
        num_images=1,
        seed=1234,
        randomize_seed=False,
        guidance_scale=3.5,
        **SMALL,
    )
    values.update(overrides)
    return values


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def styles() -> StyleBook:
    return load_styles()


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model_path: Path) -> Any:
    import torch
    from diffusers import CogView4Pipeline

    pipe = CogView4Pipeline.from_pretrained(tiny_model_path, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class RunningServer:
    """A launched app: ``url`` for clients, ``app`` for looking inside (files folder, loader, engine)."""

    def __init__(self, app: Any, settings: Settings, *, keep: bool = False) -> None:
        self.app = app
        self.settings = settings
        self.url = f"http://{settings.host}:{settings.port}/"
        self.keep = keep  # shared by the whole run: not closed at the end of the module that started it
        self.closed = False

    def client(self, **kwargs: Any) -> Any:
        from gradio_client import Client

        return Client(self.url, verbose=False, **kwargs)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.app.demo.close()


# Every server started in this run, in order: a module's own servers are closed when the module ends (threads,
# sockets and pipelines do not pile up over a long run); the shared ones when the run ends.
STARTED: list[RunningServer] = []


@pytest.fixture(scope="session")
def start_server(tiny_model_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start a server with the given settings (tiny model, loopback, free port); all are closed at the end."""
    from glmimage.engine import LocalEngine
    from glmimage.web.server import launch

    def start(engine_factory: Any = LocalEngine, keep: bool = False, **overrides: Any) -> RunningServer:
        values: dict[str, Any] = dict(
            model="tiny",
            host="127.0.0.1",
            port=free_port(),
            rate_limit="0",
            session_rate_limit="0",
            upload_rate_limit="0",
            warmup=False,
            max_jobs_per_client=0,
        )
        values.update(overrides)
        settings = Settings(**values)
        app = launch(settings, block=False, engine_factory=engine_factory)
        app.loader.wait(120)
        server = RunningServer(app, settings, keep=keep)
        STARTED.append(server)
        return server

    yield start
    for server in STARTED:
        server.close()


@pytest.fixture(scope="module", autouse=True)
def close_servers_of_the_module() -> Iterator[None]:
    first = len(STARTED)
    yield
    for server in STARTED[first:]:
        if not server.keep:
            server.close()


@pytest.fixture(scope="session")
def server(start_server: Callable[..., RunningServer]) -> RunningServer:
    """The default server shared by end-to-end tests: no rate limit, concurrency 1."""
    return start_server(keep=True)
