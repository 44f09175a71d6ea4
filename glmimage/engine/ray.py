"""The Ray Serve backend (``--backend ray``): the model runs in a pool of Serve replicas, on one machine or many,
while the Gradio app stays the one front end with the one queue. The only module that imports Ray.

Parts, top to bottom:

- :class:`ReplicaSpec`: what a replica needs to load the model and run jobs, sent to it once.
- :class:`ImageWorker`: the Serve deployment. A replica loads the model once, through the same
  :class:`~glmimage.models.loading.PipelineLoader` as the local backend, and runs every job through a one-worker
  :class:`~glmimage.engine.local.LocalEngine`, the same code that runs jobs locally. ``generate`` is an async
  generator: ``started`` (which replica), one ``step`` per denoising step, then ``done`` with the images as raw
  pixels (lossless, nothing encoded twice, nothing written on the replica's disk) or ``error`` with a message key.
  Cancelling the stream reaches the replica as asyncio cancellation and sets the job's stop flag, which the engine
  checks at every step.
- :class:`ReplicaPool`: the front end's view of the deployment, shaped like ``PipelineLoader`` (``state``,
  ``model_name``, ``device``, ``dtype_name``, ``choice``, ``error_key``) so the page and ``/healthz`` show it as they
  show a local model, plus replicas ready versus wanted.
- :class:`RayEngine`: the :class:`~glmimage.engine.base.Engine` the service calls. It starts or joins Ray, deploys
  the workers, streams each job's steps into ``on_step``, turns ``should_stop()`` into ``response.cancel()``, and
  moves a job whose replica died or went silent to another replica once, with the same seed.

Queues: the Gradio queue is the only one visitors wait in. Its concurrency limit is the most replicas
(``Settings.workers``); each replica takes one job at a time (``max_ongoing_requests=1``), so jobs wait in
the deployment handle's queue only while fewer replicas are up than that limit (autoscaling up, or a replica
restarting): at most ``max - running`` jobs, bounded again by ``max_queued_requests``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Read by Ray when it is first imported, for this process only (set while importing, then removed, so that processes
# started later, a local Ray's replicas included, keep Ray's defaults):
# - no auto-connect: Ray would start a cluster of its own when one of its calls finds none (a Serve handle's
#   background task after ray.shutdown(), say); this app says where its Ray is (--ray-address);
# - no crash handler in the driver: it catches SIGTERM too and aborts the process after the app's own graceful stop.
_IMPORT_ENV = {"RAY_ENABLE_AUTO_CONNECT": "0", "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1"}
_import_env_set = [name for name in _IMPORT_ENV if name not in os.environ]
os.environ.update({name: _IMPORT_ENV[name] for name in _import_env_set})

import ray  # noqa: E402
from PIL import Image  # noqa: E402
from ray import serve  # noqa: E402
from ray.exceptions import RayActorError  # noqa: E402
from ray.serve.exceptions import BackPressureError, RequestCancelledError  # noqa: E402

from ..config import Settings  # noqa: E402
from ..errors import AppError, EngineError, InputError, ModelNotReady  # noqa: E402
from ..models.accel import FastPaths, token_count  # noqa: E402
from ..models.families import COGVIEW4, Family  # noqa: E402
from ..models.loading import ModelChoice, ModelState, PipelineLoader  # noqa: E402
from ..requests import GenerationRequest  # noqa: E402
from ..styles import StyleBook, StyledPrompt  # noqa: E402
from .base import (  # noqa: E402
    GenerationResult,
    GenerationStopped,
    PhaseCallback,
    StepCallback,
    StopCheck,
    Timings,
    pick_seed,
)
from .local import LOAD_TIMEOUT_S, LocalEngine, _open_picture  # noqa: E402

for _name in _import_env_set:
    del os.environ[_name]

log = logging.getLogger("glmimage.engine.ray")

APP_NAME = "glmimage"
DEPLOYMENT = "ImageWorker"
# CPUs Ray reserves for each replica, and the torch threads it runs with, so replicas on one machine do not fight
# over its cores (a GPU replica needs few).
REPLICA_CPUS = 1
# Serve's autoscaling, for --replicas MIN:MAX: one ongoing job per replica is the target. Serve's own delays: up
# after 30 s of demand, down after 10 min without. Tests lower the upscale delay here.
AUTOSCALING: dict[str, Any] = {"target_ongoing_requests": 1, "upscale_delay_s": 30.0, "downscale_delay_s": 600.0}
# A model that fails to load is tried this often per replica before the deployment is marked failed (Serve's
# default, 20, would reload a missing model for many minutes).
CONSTRUCTOR_RETRIES = 3
# Serve's health check of each replica (its defaults): a replica that fails it, or does not answer in time, is
# replaced. Tests shorten it.
HEALTH_CHECK: dict[str, float] = {"health_check_period_s": 10.0, "health_check_timeout_s": 30.0}
STOP_POLL_S = 0.1  # how often a waiting job looks at should_stop() between events
MONITOR_PERIOD_S = 1.0  # how often the front end reads the replicas' states from Serve


# ---- the replica -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a replica needs, from the front end's settings (pickled once, at deployment)."""

    model: str | None
    dtype: str
    fast: FastPaths
    warmup: bool
    cache_dir: str | None
    styles: StyleBook
    log_prompts: bool
    stall_s: float
    family: Family = COGVIEW4  # what the front end's page was built for; a replica refuses another

    @classmethod
    def from_settings(cls, settings: Settings, styles: StyleBook, family: Family = COGVIEW4) -> ReplicaSpec:
        return cls(
            model=settings.model,
            dtype=settings.dtype,
            fast=settings.fast_paths,
            warmup=settings.warmup,
            cache_dir=settings.cache_dir,
            styles=styles,
            log_prompts=settings.log_prompts,
            stall_s=settings.replica_timeout,
            family=family,
        )


def _pixels(image: Image.Image) -> dict[str, Any]:
    return {"mode": image.mode, "size": image.size, "pixels": image.tobytes()}


def _image(data: dict[str, Any]) -> Image.Image:
    return Image.frombytes(data["mode"], tuple(data["size"]), data["pixels"])


@serve.deployment(name=DEPLOYMENT, max_ongoing_requests=1)
class ImageWorker:
    """One replica: one pipeline, one job at a time. Options that depend on the settings (replicas, GPUs, queue,
    autoscaling) are set by :func:`deployment_options` when the front end deploys it."""

    def __init__(self, spec: ReplicaSpec) -> None:
        import torch

        torch.set_num_threads(REPLICA_CPUS)
        if not logging.getLogger("glmimage").handlers:  # into the replica's log (and the driver's console)
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logging.getLogger("glmimage").addHandler(handler)
            logging.getLogger("glmimage").setLevel(logging.INFO)
        self.spec = spec
        self.loader = PipelineLoader(
            spec.model,
            spec.dtype,
            spec.fast,
            warmup=spec.warmup,
            cache_dir=spec.cache_dir,
            expected_family=spec.family,
        ).start()
        try:
            self.loader.wait(LOAD_TIMEOUT_S)
        except ModelNotReady as exc:
            # Serve retries the constructor, then reports the deployment failed with this text; the front end
            # reads the key from it to tell the visitor why.
            raise RuntimeError(f"{exc.key}: {exc.detail}") from None
        self.engine = LocalEngine(self.loader, spec.styles, 1)
        replica = serve.get_replica_context().replica_tag
        node = ray.util.get_node_ip_address()
        device = self.loader.device.type
        gpu_ids = ray.get_gpu_ids()
        if device == "cuda" and gpu_ids:
            device = "cuda:" + ",".join(str(i) for i in gpu_ids)  # the machine's own GPU numbers
        self.worker = {"name": f"ray:{replica}@{node}:{device}", "replica": replica, "node": node, "pid": os.getpid()}
        self.jobs_run = 0
        self.steps_run = 0
        self._last_progress: float | None = None  # monotonic time of the running job's last sign of life
        log.info("replica %s ready: model %s on %s", self.worker["name"], self.loader.model_name, device)

    def info(self) -> dict[str, Any]:
        """What the front end shows and needs: the model, where it runs, and the tokenizer for the token limit
        (so the front end needs no model files)."""
        choice = self.loader.choice
        return {
            "model": choice.name,
            "is_tiny": choice.is_tiny,
            "auto_tiny": choice.auto_tiny,
            "device": self.loader.device.type,
            "dtype": self.loader.dtype_name,
            "load_seconds": self.loader.load_seconds,
            "tokenizer": self.loader.wait(0).tokenizer,
        }

    async def generate(self, job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Run one job, streaming its progress; ``job["request"]`` holds the seed the front end chose."""
        request = GenerationRequest(**job["request"])
        loop = asyncio.get_running_loop()
        steps: asyncio.Queue[int | str | None] = asyncio.Queue()
        stop = threading.Event()

        def on_step(done: int, _total: int) -> None:  # on the engine's thread
            self.steps_run += 1
            self._last_progress = time.monotonic()
            loop.call_soon_threadsafe(steps.put_nowait, done)

        def on_phase(phase: str) -> None:  # GLM-Image's planning: a sign of life, shown on the page
            self._last_progress = time.monotonic()
            loop.call_soon_threadsafe(steps.put_nowait, phase)

        if self.spec.log_prompts:
            log.info("job: prompt=%r negative=%r style=%s", request.prompt, request.negative_prompt, request.style)
        yield {"event": "started", "worker": self.worker, "jobs_run": self.jobs_run, "steps_run": self.steps_run}
        self.jobs_run += 1
        self._last_progress = time.monotonic()
        # An edit's pictures travel with the job, in memory: nothing of a visitor's is written on a replica's disk.
        pictures = [_image(data) for data in job.get("pictures", [])]
        running = self.engine.submit(request, on_step, stop.is_set, on_phase, pictures=pictures)
        running.add_done_callback(lambda _: loop.call_soon_threadsafe(steps.put_nowait, None))
        future = asyncio.wrap_future(running)
        try:
            while (done := await steps.get()) is not None:
                if isinstance(done, str):
                    yield {"event": "phase", "phase": done}
                else:
                    yield {"event": "step", "done": done, "total": request.num_inference_steps}
            try:
                result = await future
            except AppError as exc:
                kind = "input" if isinstance(exc, InputError) else "engine"
                yield {"event": "error", "kind": kind, "key": exc.key, "params": dict(exc.params)}
                return
            yield {
                "event": "done",
                "seed": result.seed,
                "final": {"prompt": result.final.prompt, "negative_prompt": result.final.negative_prompt},
                "images": [_pixels(image) for image in result.images],
                "timings": dataclasses.asdict(result.timings),
            }
        except asyncio.CancelledError:
            stop.set()
            # Stay busy until the pipeline has stopped (within one step): Serve gives this replica its next job
            # only when this call ends, so that job never waits behind a stopped one.
            await asyncio.wait({future})
            raise
        finally:
            self._last_progress = None

    def check_health(self) -> None:
        """Serve calls this every 10 s; raising makes it replace the replica. A job without a step for
        --replica-timeout seconds means the pipeline or the GPU hangs."""
        last = self._last_progress
        if last is not None and time.monotonic() - last > self.spec.stall_s:
            raise RuntimeError(f"the running job made no progress for {time.monotonic() - last:.0f} s")


def deployment_options(settings: Settings, runtime_env: dict[str, Any] | None) -> dict[str, Any]:
    """Serve options for the settings: replicas or autoscaling, GPUs per replica, and a handle queue no longer
    than the jobs the Gradio queue can have running beyond the replicas up."""
    low, high = settings.replica_range
    actor: dict[str, Any] = {"num_cpus": REPLICA_CPUS, "num_gpus": settings.replica_gpus}
    env = dict(runtime_env or {})
    if settings.replica_gpus == 0:
        # Ray leaves the GPUs visible to a replica that asked for none; it would load the model onto them.
        env["env_vars"] = {**env.get("env_vars", {}), "CUDA_VISIBLE_DEVICES": ""}
    if env:
        actor["runtime_env"] = env
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        "max_ongoing_requests": 1,
        "max_queued_requests": high,
        "max_constructor_retry_count": CONSTRUCTOR_RETRIES,
        "graceful_shutdown_timeout_s": 10.0,
        **HEALTH_CHECK,
    }
    if low == high:
        options["num_replicas"] = low
    else:
        options["autoscaling_config"] = {**AUTOSCALING, "min_replicas": low, "max_replicas": high}
    return options


# ---- the front end ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaDevice:
    """Where the replicas run, as ``loader.device`` reads for a local model (``.type``: "cuda" or "cpu")."""

    type: str

    def __str__(self) -> str:
        return self.type


class ReplicaPool:
    """The deployment as the page and ``/healthz`` see a model: loading until a replica is up, ready while at
    least one is, failed when Ray or the model could not start (``error_key`` says why)."""

    def __init__(self, settings: Settings) -> None:
        self.requested_model = settings.model
        self.fast = settings.fast_paths
        self.replicas_min, self.replicas_max = settings.replica_range
        self.state = ModelState.LOADING
        self.error_key = ""
        self.error_detail = ""
        self.choice: ModelChoice | None = None
        self.device: ReplicaDevice | None = None
        self.dtype_name: str | None = None
        self.load_seconds: float | None = None
        self.replicas_ready = 0
        self.replicas_wanted = self.replicas_min
        self.workers: list[Any] = []  # a local model's pipelines; the replicas are in health()
        self.family: Family | None = None

    @property
    def model_name(self) -> str:
        if self.choice is not None:
            return self.choice.name
        return self.requested_model or "…"

    def health(self) -> dict[str, Any]:
        """For /healthz and /readyz: replicas ready versus wanted (Serve's current target) and the range."""
        return {
            "backend": "ray",
            "replicas_ready": self.replicas_ready,
            "replicas_wanted": self.replicas_wanted,
            "replicas_min": self.replicas_min,
            "replicas_max": self.replicas_max,
        }

    def set_model(self, info: dict[str, Any]) -> None:
        self.choice = ModelChoice(info["model"], is_tiny=info["is_tiny"], auto_tiny=info["auto_tiny"])
        self.device = ReplicaDevice(info["device"])
        self.dtype_name = info["dtype"]
        self.load_seconds = info["load_seconds"]

    def update(self, ready: int, wanted: int) -> None:
        self.replicas_ready, self.replicas_wanted = ready, wanted
        if self.state is not ModelState.FAILED and self.choice is not None:
            self.state = ModelState.READY if ready else ModelState.LOADING

    def fail(self, key: str, detail: str) -> None:
        if self.state is ModelState.FAILED and key == "load.failed":
            return  # already failed, and known why (the deployment's message names the loader's reason)
        self.error_key, self.error_detail = key, detail[:300]
        self.state = ModelState.FAILED


class ReplicaLost(Exception):
    """The replica running a job died or went silent: the job may be retried elsewhere."""


class NoFreeReplica(Exception):
    """No replica took the job in time."""


def _failure_key(message: str) -> str:
    """The loader's message key in a failed deployment's message (see ``ImageWorker.__init__``)."""
    found = re.search(r"\b(load\.[a-z_]+):", message)
    return found.group(1) if found else "load.failed"


def _error_from(event: dict[str, Any]) -> AppError:
    """The replica's error event as the exception the local engine would have raised."""
    key, params = event["key"], event["params"]
    if key == "status.stopped":
        return GenerationStopped(params["step"], params["total"])
    if event["kind"] == "input":
        return InputError(key, **params)
    return EngineError(key, **params)


class RayEngine:
    """Runs jobs on the Serve deployment; ``pool`` is the view the page shows instead of a local loader."""

    def __init__(self, settings: Settings, styles: StyleBook, family: Family = COGVIEW4) -> None:
        self.settings = settings
        self.spec = ReplicaSpec.from_settings(settings, styles, family)
        self.pool = ReplicaPool(settings)
        self.pool.family = family
        self.timeout_s = settings.replica_timeout
        self._handle: Any = None  # serve.handle.DeploymentHandle, once a replica is up
        self._stream: Any = None  # the same, streaming: one handle (one router) for every job
        self._tokenizer: Any = None
        self._connected = False  # this engine called ray.init (and so calls ray.shutdown)
        self._owns_ray = False  # ... and that started a Ray of its own, which goes with it
        self._serving = False  # Serve was started (or found) for this app
        self._env_set: list[str] = []
        self._closed = threading.Event()
        self._jobs = itertools.count(1)
        self._running: dict[int, dict[str, Any]] = {}
        self._replicas_seen: dict[str, dict[str, int]] = {}
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="glmimage-ray-jobs", daemon=True).start()
        self._ray_thread = threading.Thread(target=self._run, name="glmimage-ray", daemon=True)
        self._deployer = threading.Thread(target=self._deploy, name="glmimage-ray-deploy", daemon=True)
        self._ray_thread.start()

    # -- the Engine protocol --

    def submit(
        self,
        request: GenerationRequest,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        on_phase: PhaseCallback | None = None,
    ) -> concurrent.futures.Future[GenerationResult]:
        if self._closed.is_set():
            raise EngineError("error.generation_failed")
        return asyncio.run_coroutine_threadsafe(self._generate(request, on_step, should_stop, on_phase), self._loop)

    def count_tokens(self, text: str) -> int | None:
        """Token count with the replicas' own tokenizer, or None until a replica is up."""
        return None if self._tokenizer is None else token_count(self._tokenizer, text)

    def close(self) -> None:
        """Remove this app's replicas; shut down a Ray this engine started, or leave a joined cluster running.
        The work happens on the engine's Ray thread (see ``_run``); this waits for it."""
        self._closed.set()  # new jobs are refused; the Ray thread stops watching and tears down
        self._ray_thread.join(timeout=180)
        if self._ray_thread.is_alive():
            log.error("the Ray backend did not shut down within 180 s")

    # -- what tests and operators can look at --

    def running(self) -> list[dict[str, Any]]:
        """The jobs running now: the replica each runs on (name, node, pid) and its steps so far."""
        return [dict(job) for job in list(self._running.values())]

    def replicas_seen(self) -> dict[str, dict[str, int]]:
        """Per replica, its counters (jobs and steps run, stopped ones included) as its latest job began."""
        return {name: dict(counts) for name, counts in self._replicas_seen.items()}

    # -- start-up and monitoring (a thread of its own) --

    def _run(self) -> None:
        """The engine's Ray thread: start or join Ray, deploy, watch the replicas until closed, tear down.

        One thread from ``ray.init`` to ``ray.shutdown``: Ray ties the processes of a cluster it starts to the thread
        that started it (they get a signal when it ends), so that thread must outlive the cluster."""
        closing = 0.0
        try:
            self._connect()
            if not self._closed.is_set():
                serve.start(proxy_location="Disabled")  # no HTTP port: only this front end calls the replicas
                self._serving = True
                self._deployer.start()
                self._monitor()
        except Exception as exc:  # noqa: BLE001 - any failure is shown on the page; the server stays up
            log.exception("could not start or reach Ray")
            self.pool.fail("load.ray_failed", f"{type(exc).__name__}: {exc}")
            self._closed.wait()
        finally:
            closing = time.monotonic()
            self._teardown()
        log.info(
            "ray backend closed in %.1f s (%s)",
            time.monotonic() - closing,
            "its Ray stopped" if self._owns_ray else "the cluster left running",
        )

    def _teardown(self) -> None:
        try:
            if self._serving and ray.is_initialized():
                if self._owns_ray:
                    serve.shutdown()  # the replicas and Serve's own actors, with Serve's graceful stop
                else:
                    serve.delete(APP_NAME)  # only this app's replicas: their GPUs are free for the next start
                for handle in (self._stream, self._handle):
                    if handle is not None:
                        handle.shutdown()  # its router's background tasks, which would call Ray later
                if self._deployer.is_alive():
                    self._deployer.join(timeout=30)  # serve.run gives up once its application is gone
        except Exception:  # noqa: BLE001 - shutting down: say so and go on
            log.exception("could not remove the Serve application")
        finally:
            if self._connected:
                ray.shutdown()  # a Ray of our own stops with it; a joined one only loses this driver
                self._connected = False
            for name in self._env_set:
                os.environ.pop(name, None)
            self._loop.call_soon_threadsafe(self._loop.stop)

    def _connect(self) -> None:
        if ray.is_initialized():  # a Ray this process already runs (embedding, tests): use it, leave it
            return
        address = self.settings.ray_address
        if address:
            # Remote machines get this very code with the job, so they need only the packages installed.
            package = Path(__file__).resolve().parents[1]
            runtime_env = {"py_modules": [str(package)], "excludes": ["__pycache__"]}
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
        else:
            if "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ:
                # Ray listens on this machine's network address, not loopback. Given a token, ray.init turns token
                # authentication on with it (RAY_AUTH_MODE=token), so nobody who reaches its ports can run code on
                # it; without one it would store a token of its own in ~/.ray for every later cluster.
                self._env_set = ["RAY_AUTH_TOKEN", "RAY_AUTH_MODE"]
                os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
            # "local": a new Ray, even where `ray start` runs one here (ray.init() would join that). No dashboard:
            # one more open port, and memory, for nothing this app reads.
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
            self._owns_ray = True
        self._connected = True
        log.info("ray backend: %s, resources %s", address or "a Ray of its own", ray.cluster_resources())

    def _deploy(self) -> None:
        """``serve.run`` returns once every replica is up; the monitor sees the first one sooner."""
        runtime_env = dict(ray.get_runtime_context().runtime_env or {})
        app = ImageWorker.options(**deployment_options(self.settings, runtime_env)).bind(self.spec)
        try:
            serve.run(app, name=APP_NAME, route_prefix=None)
        except Exception as exc:  # noqa: BLE001 - reported on the page and /healthz; the server stays up
            if not self._closed.is_set():
                log.error("deploying the image workers failed: %s", exc)
                try:
                    self._read_replicas()  # Serve's own message says why, with the loader's key
                finally:
                    self.pool.fail(_failure_key(str(exc)), str(exc))

    def _monitor(self) -> None:
        while not self._closed.wait(MONITOR_PERIOD_S):
            try:
                self._read_replicas()
            except Exception:  # noqa: BLE001 - Serve busy or restarting: try again next period
                log.warning("could not read the replicas' state", exc_info=True)

    def _read_replicas(self) -> None:
        app = serve.status().applications.get(APP_NAME)
        deployment = app.deployments.get(DEPLOYMENT) if app is not None else None
        if deployment is None:
            return
        counts = {str(getattr(state, "value", state)): n for state, n in deployment.replica_states.items()}
        ready = counts.get("RUNNING", 0)
        wanted = sum(n for state, n in counts.items() if state not in ("STOPPING", "STOPPED"))
        if str(getattr(deployment.status, "value", deployment.status)) == "DEPLOY_FAILED":
            self.pool.fail(_failure_key(deployment.message), deployment.message)
        if ready and self._handle is None:
            handle = serve.get_deployment_handle(DEPLOYMENT, app_name=APP_NAME)
            info = handle.info.remote().result(timeout_s=self.timeout_s)
            self._tokenizer = info["tokenizer"]
            self.pool.set_model(info)
            self._stream = handle.options(stream=True)
            self._handle = handle
            log.info("ray backend ready: model %s on %s replicas", info["model"], info["device"])
        self.pool.update(ready, wanted)

    # -- one job (on the engine's event loop) --

    async def _generate(
        self,
        request: GenerationRequest,
        on_step: StepCallback | None,
        should_stop: StopCheck | None,
        on_phase: PhaseCallback | None = None,
    ) -> GenerationResult:
        started = time.perf_counter()
        stop = should_stop or (lambda: False)
        await self._wait_for_replicas(stop, request.num_inference_steps)
        # Chosen here, once: a job retried on another replica draws the same picture.
        seed = pick_seed(request)
        job = {
            "request": {**dataclasses.asdict(request), "seed": seed, "randomize_seed": False},
            # An edit's pictures (the intake's clean copies, in the session folder here) go as pixels.
            "pictures": [_pixels(_open_picture(path)) for path in request.images],
        }
        for attempt in (1, 2):
            try:
                done, worker = await self._attempt(job, request.num_inference_steps, on_step, on_phase, stop)
            except ReplicaLost as lost:
                if attempt == 2:
                    log.error("job lost again on its retry (%s): giving up", lost)
                    raise EngineError("error.replica_lost") from None
                log.warning("job lost on its replica (%s): retrying once on another, same seed", lost)
                continue
            except NoFreeReplica:
                key = "error.no_replica" if attempt == 1 else "error.replica_lost"
                log.error("no replica took the job within %.0f s", self.timeout_s)
                raise EngineError(key) from None
            t = done["timings"]
            timings = Timings(
                load_wait_s=time.perf_counter() - started - t["model_s"],  # waiting for a replica and for Ray
                model_s=t["model_s"],
                per_step_s=t["per_step_s"],
                steps=t["steps"],
            )
            return GenerationResult(
                request=request,
                seed=done["seed"],
                final=StyledPrompt(done["final"]["prompt"], done["final"]["negative_prompt"]),
                images=[_image(data) for data in done["images"]],
                timings=timings,
                worker=worker,
            )
        raise AssertionError("unreachable")

    async def _wait_for_replicas(self, stop: StopCheck, total: int) -> None:
        """Wait while Ray starts and the first replica loads, as a local job waits for its model."""
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while self._handle is None:
            if self.pool.state is ModelState.FAILED:
                raise EngineError(self.pool.error_key, detail=self.pool.error_detail)
            if stop():
                raise GenerationStopped(0, total)
            if time.monotonic() > deadline:
                raise EngineError("load.timeout")
            await asyncio.sleep(STOP_POLL_S)

    async def _attempt(
        self,
        job: dict[str, Any],
        total: int,
        on_step: StepCallback | None,
        on_phase: PhaseCallback | None,
        stop: Callable[[], bool],
    ) -> tuple[dict[str, Any], str]:
        """One try on one replica: the ``done`` event and the replica's name. Raises ReplicaLost, NoFreeReplica,
        GenerationStopped, or the replica's own error.

        Two clocks: a started job whose replica sends nothing for ``--replica-timeout`` seconds is lost (a hung
        replica; its health check fails too). A job not yet started waits while any replica is up, since a busy
        one frees in turn, but no longer than that timeout while none is."""
        job_id = next(self._jobs)
        try:
            response = self._stream.generate.remote(job)
        except BackPressureError:
            raise NoFreeReplica from None
        events = response.__aiter__()
        pending: asyncio.Future[Any] | None = None
        worker = ""
        steps = 0
        last_sign = time.monotonic()
        none_up_since: float | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(events.__anext__())
                await asyncio.wait({pending}, timeout=STOP_POLL_S)
                if not pending.done():
                    if stop() and steps < total:
                        raise GenerationStopped(steps, total)
                    now = time.monotonic()
                    if worker and now - last_sign > self.timeout_s:
                        raise ReplicaLost(f"{worker} sent nothing for {self.timeout_s:.0f} s")
                    if not worker:
                        none_up_since = None if self.pool.replicas_ready else (none_up_since or now)
                        if none_up_since is not None and now - none_up_since > self.timeout_s:
                            raise NoFreeReplica
                    continue
                try:
                    event = pending.result()
                except StopAsyncIteration:
                    raise EngineError("error.generation_failed") from None
                except (RayActorError, RequestCancelledError) as exc:
                    raise ReplicaLost(f"{worker or 'a replica'}: {type(exc).__name__}") from None
                except BackPressureError:
                    raise NoFreeReplica from None
                pending = None
                last_sign = time.monotonic()
                kind = event["event"]
                if kind == "started":
                    worker = event["worker"]["name"]
                    self._running[job_id] = {**event["worker"], "steps": 0}
                    self._replicas_seen[worker] = {"jobs_run": event["jobs_run"], "steps_run": event["steps_run"]}
                elif kind == "step":
                    steps = event["done"]
                    self._running[job_id]["steps"] = steps
                    if on_step is not None:
                        on_step(steps, total)
                    if stop() and steps < total:
                        raise GenerationStopped(steps, total)
                elif kind == "phase":
                    if on_phase is not None:
                        on_phase(event["phase"])
                elif kind == "done":
                    return event, worker
                else:
                    raise _error_from(event)
        except BaseException:
            response.cancel()  # stops the replica's job at its next step; harmless when it already ended
            raise
        finally:
            self._running.pop(job_id, None)
            if pending is not None:
                pending.cancel()
                pending.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Read a finished stream read's outcome, so asyncio does not report it as never retrieved."""
    if not future.cancelled():
        future.exception()
