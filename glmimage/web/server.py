"""Assembling and launching the app: settings in, a running server out. ``app.py`` only calls :func:`main`."""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Gradio's analytics contact the internet when Blocks() is created; off before gradio is imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from starlette.middleware import Middleware  # noqa: E402

from .. import zerogpu  # noqa: E402
from ..auth import LoginThrottle, PasswordFile  # noqa: E402
from ..config import Settings, load_settings  # noqa: E402
from ..engine import Engine, LocalEngine  # noqa: E402
from ..enhancer import EnhancerConfig, PromptEnhancer  # noqa: E402
from ..i18n import LANGUAGES, load_translations  # noqa: E402
from ..maintenance import Drain, MaintenanceFile  # noqa: E402
from ..metrics import LiveValues, Metrics  # noqa: E402
from ..models.families import expected_family  # noqa: E402
from ..models.loading import TINY_FAMILIES, ModelState, PipelineLoader  # noqa: E402
from ..sessions import FileSweeper  # noqa: E402
from ..sizes import ASSETS_DIR, load_size_presets  # noqa: E402
from ..styles import StyleBook, load_styles  # noqa: E402
from .access import LoginGate, make_auth_check  # noqa: E402
from .gradio_adapter import generation_jobs, undelivered_results  # noqa: E402
from .routes import (  # noqa: E402
    NO_DEEP_LINKS,
    PAGE_SCRIPT_PATH,
    health_route,
    metrics_route,
    not_ready_reasons,
    page_script_route,
    ready_route,
)

log = logging.getLogger("glmimage")

# After the drain time: how long running jobs get to reach their next step and stop (one step of the largest
# image on a slow or offloaded GPU). Then how long finished results get to reach their clients' streams, and how
# long the server stays up after that so the clients can fetch the image files the results point to.
STOP_GRACE_S = 30.0
DELIVERY_GRACE_S = 3.0
FETCH_GRACE_S = 2.0


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
    context: Any  # glmimage.web.handlers.Context: the page's components and what its handlers use
    drain: Drain = dataclasses.field(default_factory=Drain)
    maintenance: MaintenanceFile | None = None
    metrics: Metrics | None = None
    edge: Any = None  # glmimage.web.security.Edge


EngineFactory = Callable[[PipelineLoader, StyleBook, int], Engine]


def create_app(settings: Settings, engine_factory: EngineFactory = LocalEngine) -> App:
    """Check the data files, start loading the model in the background, and build the page (not launched).

    ``engine_factory`` lets tests put a faulty engine behind the real page."""
    from .handlers import files_folder
    from .layout import make_i18n
    from .security import Edge, EdgePolicy
    from .wiring import AppParts, build_demo

    styles = load_styles()
    translator = load_translations()
    family = expected_family(settings.model, TINY_FAMILIES)
    presets = load_size_presets(family=family)
    examples = load_examples(styles.ids)
    enhancer_config = EnhancerConfig.from_env()
    if settings.backend == "ray":
        from ..engine.ray import RayEngine  # the only import of Ray, and only for this backend

        engine = RayEngine(settings, styles, family)
        loader = engine.pool  # the replicas' state, shown as a local model's is
    else:
        loader = PipelineLoader(
            settings.model,
            settings.dtype,
            settings.fast_paths,
            warmup=settings.warmup,
            cache_dir=settings.cache_dir,
            devices=settings.device_list,
            concurrency=settings.concurrency,
            expected_family=family,
        ).start()
        engine = engine_factory(loader, styles, settings.workers)
    drain = Drain()
    maintenance = MaintenanceFile(settings.maintenance_file) if settings.maintenance_file else None
    metrics = None
    if settings.metrics:
        # Read at each scrape; ``demo`` is assigned below, before the server can answer a scrape.
        metrics = Metrics(
            LiveValues(
                queue_length=lambda: generation_jobs(demo)[0],
                model_state=lambda: loader.state.value,
                model_states=[state.value for state in ModelState],
                maintenance=lambda: maintenance is not None and maintenance.current() is not None,
                draining=lambda: drain.draining,
            )
        )
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
        maintenance=maintenance,
        drain=drain,
        metrics=metrics,
        family=family,
    )
    i18n = make_i18n(translator, styles, family)
    context = build_demo(parts, i18n)
    demo = context.demo
    # api_open=False: otherwise POST /gradio_api/run/<name> skips the queue and its concurrency limit.
    # No max_size: Gradio's cap counts every waiting event, so a flood of cheap page events refused visitors'
    # Generate; the Edge counts --max-queue against generations only.
    demo.queue(default_concurrency_limit=1, max_size=None, api_open=False)
    edge = Edge(demo, EdgePolicy.from_settings(settings, family), translator).install()
    return App(demo, loader, i18n, parts.files_root, engine, context, drain, maintenance, metrics, edge)


class ShutdownSignals:
    """SIGTERM (docker stop, systemd, Kubernetes) and Ctrl-C, counted instead of raised as KeyboardInterrupt at
    whatever line the main thread is on: the first starts a graceful drain, a second cuts the drain short."""

    def __init__(self) -> None:
        self.count = 0
        self._event = threading.Event()

    def install(self) -> ShutdownSignals:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        return self

    def _on_signal(self, _signum: int, _frame: Any) -> None:
        self.count += 1
        self._event.set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


def launch(
    settings: Settings,
    *,
    block: bool = True,
    engine_factory: EngineFactory = LocalEngine,
    signals: ShutdownSignals | None = None,
) -> App:
    """Build and start the server; with ``block=False`` it returns at once (tests, benchmarks).

    Blocking, it runs until SIGTERM or Ctrl-C (``signals``, installed by :func:`main`; without them Ctrl-C
    arrives as KeyboardInterrupt), then drains (:func:`drain`) and deletes its files."""
    started = time.monotonic()
    app = create_app(settings, engine_factory)
    demo, loader = app.demo, app.loader
    from .layout import CSS
    from .wiring import forget_idle_sessions_forever

    sweeper = FileSweeper(app.files_root, settings.file_ttl)
    replicas = loader.health if settings.backend == "ray" else dict  # replicas ready versus wanted

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        sweeper.start()
        reaper = asyncio.create_task(forget_idle_sessions_forever(demo, settings.session_ttl))
        watch = asyncio.create_task(app.edge.run_forever())  # unlistened jobs, idle sessions, stray uploads
        try:
            yield
        finally:
            reaper.cancel()
            watch.cancel()
            sweeper.close()  # nothing generated outlives the server
            app.edge.at_shutdown()
            app.engine.close()  # with Ray: a Ray this server started stops with it

    routes = our_routes(app, started, replicas)
    middleware, auth = login_and_edge(app, settings)
    # uvicorn believes X-Forwarded-For from 127.0.0.1 by default, so a forged header sent from this machine (or
    # through a local proxy not named) would pick the client address and dodge the rate limit: it must trust
    # exactly --trusted-proxies. Read when launch() builds uvicorn's config.
    # The rate limit reads that address (request.client.host); networks are written as uvicorn reads them.
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(
        str(ipaddress.ip_network(entry, strict=False)) for entry in settings.trusted_proxy_list
    )
    demo.launch(
        server_name=settings.host,
        server_port=settings.port,
        i18n=app.i18n,
        # The Edge keeps --max-sessions, evicting idle sessions only; Gradio's own LRU, which would evict a session
        # in use and keep its files, is only a backstop at twice that.
        state_session_capacity=settings.max_sessions * 2,
        footer_links=["api", "settings"],
        run_history=False,
        ssr_mode=False,
        share=False,
        show_error=False,  # an unexpected exception's text (paths, internals) never reaches the page
        css=CSS,
        auth=auth,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        ssl_keyfile_password=settings.ssl_keyfile_password,
        # Only Gradio's own start-up call to this server: its certificate names the public host, not 127.0.0.1,
        # and may be self-signed. Visitors' browsers verify as always.
        ssl_verify=not settings.tls,
        head=f'<script src="{PAGE_SCRIPT_PATH.lstrip("/")}"></script>',
        favicon_path=str(ASSETS_DIR / "favicon.png"),
        # Uploads are pictures (to read parameters from, or to edit): each at most --max-upload-mb (the edge refuses
        # a larger one first, in the visitor's language; this is Gradio's own bound behind it).
        max_file_size=settings.max_upload_bytes,
        app_kwargs={"routes": routes, "lifespan": lifespan, "middleware": middleware},
        prevent_thread_lock=True,
        quiet=False,
    )
    if block:
        serve_until_stopped(app, settings.drain_timeout, sweeper, signals or ShutdownSignals())
    return app


def our_routes(app: App, started: float, replicas: Callable[[], Any]) -> list[Any]:
    """The routes GLM Image adds beside Gradio's: health, readiness, the page's script, metrics."""
    from .gradio_adapter import page_script
    from .layout import TITLE

    loader = app.loader
    routes = [
        health_route(app.demo, loader, started, replicas),
        NO_DEEP_LINKS,
        ready_route(loader, lambda: not_ready_reasons(loader, app.maintenance, app.drain), replicas),
        page_script_route(page_script(TITLE, tab_title_words(app.context.translator))),
    ]
    if app.metrics is not None:
        routes.append(metrics_route(app.metrics))
    return routes


def login_and_edge(app: App, settings: Settings) -> tuple[list[Middleware], Any]:
    """The middleware, outermost first, and Gradio's login check (None without ``--auth-file``). With a login,
    nobody without one reaches anything else (they get 401 and nothing more); then the edge (body limits, security
    headers, sessions, uploads) sees every request."""
    from .security import EdgeMiddleware

    middleware, auth = [Middleware(EdgeMiddleware, edge=app.edge)], None
    if settings.auth_file:
        auth = make_auth_check(PasswordFile(settings.auth_file))
        demo = app.demo
        middleware.insert(0, Middleware(LoginGate, server_app=lambda: demo.server_app, throttle=LoginThrottle()))
    return middleware, auth


def serve_until_stopped(app: App, drain_timeout: float, sweeper: FileSweeper, signals: ShutdownSignals) -> None:
    """Serve until SIGTERM or Ctrl-C, drain, then close and delete every generated file.

    Not Gradio's own wait: on Ctrl-C it only asks uvicorn to stop and gives up after 5 s while page connections
    stay open, so the lifespan's clean-up could die with the process."""
    try:
        while app.demo.is_running and not signals.wait(0.1):
            pass
        drain(app, drain_timeout, signals)
    except KeyboardInterrupt:
        drain(app, drain_timeout, signals)
    finally:
        log.info("stopping")
        app.demo.close(verbose=False)
        sweeper.close()  # nothing generated outlives the server, even if the lifespan did not finish
        log.info("stopped; generated files deleted")
        app.edge.at_shutdown()
        app.engine.close()


def drain(app: App, timeout: float, signals: ShutdownSignals) -> None:
    """Stop taking generations and let the running and queued ones finish, for up to ``timeout`` seconds (a
    second signal ends the wait); then running jobs stop at their next step and queued ones are refused, both
    with the "restarting" message. Returns once no generation is left and the results have gone out."""
    app.drain.begin()  # /readyz answers 503 from now on, and new generations are refused
    waiting, running = generation_jobs(app.demo)
    had_work = bool(waiting + running or undelivered_results(app.demo))
    if waiting + running:
        log.info(
            "shutting down: no new generations; %d running and %d queued may finish within %g s",
            running,
            waiting,
            timeout,
        )
        first_signals = signals.count
        if not _wait_until_idle(app, timeout, lambda: signals.count > max(1, first_signals)):
            waiting, running = generation_jobs(app.demo)
            log.warning(
                "drain time spent: stopping %d running generation(s) at their next step, refusing %d queued",
                running,
                waiting,
            )
            app.drain.stop_jobs()
            if not _wait_until_idle(app, STOP_GRACE_S, lambda: False):
                log.warning("generations did not stop within %g s; closing anyway", STOP_GRACE_S)
    if had_work:
        deadline = time.monotonic() + DELIVERY_GRACE_S
        while undelivered_results(app.demo) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(FETCH_GRACE_S)
        log.info("all generations ended")


def _wait_until_idle(app: App, timeout: float, cut_short: Callable[[], bool]) -> bool:
    """True once no generation is queued or running; False when ``timeout`` passed or ``cut_short()`` said so."""
    deadline = time.monotonic() + timeout
    try:
        while sum(generation_jobs(app.demo)):
            if time.monotonic() >= deadline or cut_short():
                return False
            time.sleep(0.1)
    except KeyboardInterrupt:  # a second Ctrl-C without ShutdownSignals installed
        return False
    return True


def tab_title_words(translator: Any) -> dict[str, dict[str, str]]:
    """The tab title's words while a job runs, per language, for the page script."""
    return {
        lang: {"step": translator.t("tab.step", lang), "queue": translator.t("tab.queue", lang)} for lang in LANGUAGES
    }


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(argv)
    except ValueError as exc:
        print(f"app.py: error: {exc}", file=sys.stderr)
        return 2
    if zerogpu.active() and settings.warmup:
        # On ZeroGPU the GPU exists only inside the wrapped generation call, so a warm-up at load would fail.
        log.info("ZeroGPU: no warm-up generation at start-up")
        settings = dataclasses.replace(settings, warmup=False)
    # docker stop / systemd send SIGTERM: drain as on Ctrl-C, then delete the generated files.
    signals = ShutdownSignals().install()
    keep_freed_memory()
    launch(settings, signals=signals)
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
