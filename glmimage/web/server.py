"""Assembling and launching the app: settings in, a running server out. ``app.py`` only calls :func:`main`."""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Gradio's analytics contact the internet when Blocks() is created; off before gradio is imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from ..config import Settings, load_settings  # noqa: E402
from ..engine import Engine, LocalEngine  # noqa: E402
from ..enhancer import EnhancerConfig, PromptEnhancer  # noqa: E402
from ..i18n import load_translations  # noqa: E402
from ..models.loading import PipelineLoader  # noqa: E402
from ..sessions import FileSweeper  # noqa: E402
from ..sizes import ASSETS_DIR, load_size_presets  # noqa: E402
from ..styles import StyleBook, load_styles  # noqa: E402

log = logging.getLogger("glmimage")


def load_examples(styles_ids: Sequence[str], path: Path = ASSETS_DIR / "examples.json") -> list[dict[str, Any]]:
    examples = json.loads(path.read_text(encoding="utf-8"))
    for example in examples:
        if example["style"] not in styles_ids:
            raise ValueError(
                f"{path.name}: example {example['prompt'][:30]!r} names an unknown style {example['style']!r}"
            )
    return examples


@dataclass
class App:
    demo: Any  # gr.Blocks
    loader: PipelineLoader
    i18n: Any  # gr.I18n, passed to launch()
    files_root: Path
    engine: Any  # glmimage.engine.Engine


EngineFactory = Callable[[PipelineLoader, StyleBook, int], Engine]


def create_app(settings: Settings, engine_factory: EngineFactory = LocalEngine) -> App:
    """Check the data files, start loading the model in the background, and build the page (not launched).

    ``engine_factory`` lets tests put a faulty engine behind the real page."""
    from .ui import AppParts, build_demo, files_folder, make_i18n

    styles = load_styles()
    translator = load_translations()
    presets = load_size_presets()
    examples = load_examples(styles.ids)
    enhancer_config = EnhancerConfig.from_env()
    if settings.backend == "ray":
        from ..engine.ray import RayEngine  # the only import of Ray, and only for this backend

        engine = RayEngine(settings, styles)
        loader = engine.pool  # the replicas' state, shown as a local model's is
    else:
        loader = PipelineLoader(
            settings.model, settings.dtype, settings.fast_paths, warmup=settings.warmup, cache_dir=settings.cache_dir
        ).start()
        engine = engine_factory(loader, styles, settings.concurrency)
    parts = AppParts(
        settings=settings,
        loader=loader,
        engine=engine,
        styles=styles,
        translator=translator,
        presets=presets,
        examples=examples,
        files_root=files_folder(),
        enhancer=PromptEnhancer(enhancer_config) if enhancer_config else None,
    )
    i18n = make_i18n(translator, styles)
    demo = build_demo(parts, i18n)
    # api_open=False: otherwise POST /gradio_api/run/<name> skips the queue and its concurrency limit.
    demo.queue(default_concurrency_limit=1, max_size=settings.max_queue, api_open=False)
    return App(demo, loader, i18n, parts.files_root, engine)


def health_route(
    demo: Any, loader: PipelineLoader, started: float, replicas: Callable[[], dict[str, Any]] = dict
) -> Route:
    """``/healthz`` for load balancers: answered on the event loop, never behind the GPU queue. ``replicas``: with
    --backend ray, the replicas ready versus wanted."""

    async def healthz(_request: Request) -> JSONResponse:
        queue = getattr(demo, "_queue", None)
        body = {
            "status": "ok" if loader.state.value != "failed" else "degraded",
            "model": loader.model_name,
            "model_state": loader.state.value,
            "device": loader.device.type if loader.device is not None else None,
            "dtype": loader.dtype_name,
            "queue_length": len(queue) if queue is not None else 0,
            "uptime_s": round(time.monotonic() - started, 1),
            **replicas(),
        }
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    return Route("/healthz", healthz, methods=["GET"])


def ready_route(loader: Any, replicas: Callable[[], dict[str, Any]] = dict) -> Route:
    """``/readyz``: 200 only while a model can generate (with Ray: at least one replica up), else 503."""

    async def readyz(_request: Request) -> JSONResponse:
        ready = loader.state.value == "ready"
        body = {"ready": ready, "model_state": loader.state.value, **replicas()}
        return JSONResponse(body, status_code=200 if ready else 503)

    return Route("/readyz", readyz, methods=["GET"])


async def _no_deep_link(_request: Request) -> JSONResponse:
    return JSONResponse("")


# Gradio's /gradio_api/deep_link writes a session's last inputs and outputs (prompts, session log) to a file under
# the temporary folder that nothing deletes, and serves them to anyone given its name. This page has no deep-link
# button; the route answers as Gradio does for an unknown session and writes nothing (it is matched before Gradio's).
NO_DEEP_LINKS = Route("/gradio_api/deep_link", _no_deep_link, methods=["GET"])


def launch(settings: Settings, *, block: bool = True, engine_factory: EngineFactory = LocalEngine) -> App:
    """Build and start the server; with ``block=False`` it returns at once (tests, benchmarks)."""
    started = time.monotonic()
    app = create_app(settings, engine_factory)
    demo, loader = app.demo, app.loader
    from .ui import CSS, forget_idle_sessions_forever

    sweeper = FileSweeper(app.files_root, settings.file_ttl)
    replicas = loader.health if settings.backend == "ray" else dict  # replicas ready versus wanted

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        sweeper.start()
        reaper = asyncio.create_task(forget_idle_sessions_forever(demo, settings.session_ttl))
        try:
            yield
        finally:
            reaper.cancel()
            sweeper.close()  # nothing generated outlives the server
            app.engine.close()  # with Ray: a Ray this server started stops with it

    # uvicorn believes X-Forwarded-For from 127.0.0.1 by default, so a forged header sent from this machine (or
    # through a local proxy not named) would pick the client address and dodge the rate limit: it must trust
    # exactly --trusted-proxies. Read when launch() builds uvicorn's config.
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(settings.trusted_proxy_list)
    demo.launch(
        server_name=settings.host,
        server_port=settings.port,
        i18n=app.i18n,
        state_session_capacity=settings.max_sessions,
        footer_links=["api", "settings"],
        run_history=False,
        ssr_mode=False,
        share=False,
        show_error=False,  # an unexpected exception's text (paths, internals) never reaches the page
        css=CSS,
        app_kwargs={
            "routes": [
                health_route(demo, loader, started, replicas),
                ready_route(loader, replicas),
                NO_DEEP_LINKS,
            ],
            "lifespan": lifespan,
        },
        prevent_thread_lock=True,
        quiet=False,
    )
    if block:
        # Not Gradio's own wait: on Ctrl-C it only asks uvicorn to stop and gives up after 5 s while page
        # connections stay open, so the lifespan's clean-up could die with the process. SIGTERM arrives here too.
        try:
            while demo.is_running:
                time.sleep(0.1)
        except KeyboardInterrupt:
            log.info("stopping")
        finally:
            demo.close(verbose=False)
            sweeper.close()  # nothing generated outlives the server, even if the lifespan did not finish
            app.engine.close()
    return app


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(argv)
    except ValueError as exc:
        print(f"app.py: error: {exc}", file=sys.stderr)
        return 2
    # docker stop / systemd send SIGTERM: shut down as on Ctrl-C, so the generated files are deleted.
    signal.signal(signal.SIGTERM, _interrupt)
    keep_freed_memory()
    launch(settings)
    return 0


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for the next generation instead of handing it back to the system.

    By default glibc trims its heaps and unmaps large blocks as soon as they are freed, so every generation on the
    CPU faults its working memory back in: ~20,000 page faults and ~30 ms of a ~90 ms tiny-model generation in
    the server (benchmarks/app_overhead.py). Fixed thresholds stop that; the memory stays at its working size,
    and at most 256 MiB of free memory at the top of a heap is kept. Does nothing where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    mallopt(m_mmap_threshold, 32 * 2**20)  # the largest glibc accepts; larger blocks are still mapped and unmapped
    mallopt(m_trim_threshold, 256 * 2**20)


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt
