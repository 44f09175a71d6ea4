"""What happens between a press of Generate and the images on the page, without Gradio.

Admission (rate limits, per-visitor queue cap, input validation) runs before a job may queue; ``run`` then asks
the engine, saves the images into the session's folder, and records the timings, the history entry and the log
line. Every refusal or failure is an exception with a message key; the UI only translates and shows it. A
session that ends while its job runs stops the job, and the job then saves nothing into it.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .config import Settings
from .engine.base import Engine, GenerationResult, PhaseCallback, StepCallback, StopCheck
from .errors import AppError, EngineError, GenerationStopped, InputError, Refused
from .maintenance import Drain, MaintenanceFile
from .models.families import COGVIEW4, Family
from .ratelimit import VisitorLimiter
from .requests import GenerationRequest, check_prompt_tokens, cost_of, validate_prompt_text, validate_request
from .sessions import HistoryEntry, Session, a1111_parameters, save_png
from .styles import NO_STYLE, StyleBook

log = logging.getLogger("glmimage.service")

# The parameters /generate and /edit share, in API order, after what each asks in words (and pictures).
SETTINGS_FIELDS = (
    "width",
    "height",
    "num_images",
    "seed",
    "randomize_seed",
    "num_inference_steps",
    "guidance_scale",
)
API_FIELDS = ("prompt", "negative_prompt", "style", *SETTINGS_FIELDS)
# /edit's parameters, in API order: no negative prompt and no style (an edit says what to change, in words).
EDIT_FIELDS = ("prompt", "images", *SETTINGS_FIELDS)


@dataclass
class Outcome:
    files: list[str]
    seed: int
    details: dict[str, Any]


def round_timings(**values: float) -> dict[str, float]:
    return {name: round(value, 4) for name, value in values.items()}


class Observer(Protocol):
    """Where the service reports how requests end (the metrics); it must never hold prompts or visitors' ids."""

    def refused(self, reason: str) -> None: ...

    def started(self, queue_s: float) -> None: ...

    def ended(
        self, outcome: str, reason: str = "", model_s: float = 0.0, per_step_s: float = 0.0, images: int = 0
    ) -> None: ...


def reason_of(exc: AppError) -> str:
    """A short, fixed word for a metric label: every input error is "invalid_input", a model that could not load
    "model_unavailable", the rest their message key without its prefix (rate_limited, oom, ...)."""
    if isinstance(exc, InputError):
        return "invalid_input"
    if exc.key.startswith("load."):
        return "model_unavailable"
    if exc.key in ("error.maintenance", "maintenance.default"):
        return "maintenance"
    return exc.key.split(".", 1)[-1]


class GenerationService:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        styles: StyleBook,
        model_name: Callable[[], str],
        *,
        observer: Observer | None = None,
        maintenance: MaintenanceFile | None = None,
        drain: Drain | None = None,
        family: Family = COGVIEW4,
    ) -> None:
        """``model_name`` is asked at each run: the model is chosen while the page is already up. ``family`` is the
        model's row of the capability table: what a request may ask for."""
        self.settings = settings
        self.engine = engine
        self.styles = styles
        self.model_name = model_name
        self.limiter = VisitorLimiter(settings.parsed_rate_limit)
        # The prompt enhancer calls an outside service: an allowance of its own, of the same size.
        self.enhancer_limiter = VisitorLimiter(settings.parsed_rate_limit)
        self.observer = observer
        self.maintenance = maintenance
        self.drain = drain or Drain()
        self.family = family

    def admit(
        self,
        raw: Mapping[str, Any],
        client: str,
        session_key: str,
        jobs_for_client: int,
        session: Session | None = None,
        lang: str = "en",
        images: Sequence[str] | None = None,
    ) -> GenerationRequest:
        """Validate and apply the limits; raises InputError or Refused. Cheap: it runs before the queue.

        ``lang`` picks the language of a maintenance notice, which comes from the operator's file as it is.
        ``images`` makes it an edit (/edit): the pictures as they arrived, counted here, taken in by the job."""
        try:
            self.check_open(lang)
            request = self.validated(raw, images)
            # The token limit too, before queuing, once the tokenizer is loaded (the engine checks it again).
            final = self.styles.apply(
                request.style, request.prompt, request.negative_prompt, takes_negative=self.family.negative_prompt
            )
            check_prompt_tokens(final.prompt, final.negative_prompt, self.engine.count_tokens, self.family)
            if self.settings.max_jobs_per_client and jobs_for_client >= self.settings.max_jobs_per_client:
                raise Refused("error.too_many_jobs", max=self.settings.max_jobs_per_client)
            # With --rate-limit-by-cost a request counts as many default requests as it costs (requests.cost_of).
            cost = cost_of(request, self.family) if self.settings.rate_limit_by_cost else 1
            self._count(self.limiter, client, session_key, cost)
        except (InputError, Refused) as exc:
            self.record_refusal(exc, raw, session, images)
            raise
        return request

    def record_refusal(
        self,
        exc: AppError,
        raw: Mapping[str, Any],
        session: Session | None,
        images: Sequence[Any] | None = None,
    ) -> None:
        """A request refused before it queued: one log line, the session log, the metrics."""
        log.info("refused request: %s", exc.key)
        if session is not None:
            extra = {} if images is None else {"reference_images": len(images)}
            session.record("refused", reason=exc.key, **self._loggable(raw), **extra)
        if self.observer is not None:
            self.observer.refused(reason_of(exc))

    def admit_enhancement(self, text: object, client: str, session_key: str) -> str:
        """Check a prompt the enhancer is asked to rewrite, as a prompt is checked, and count it against the
        visitor's enhancer allowance; raises InputError or Refused. An empty prompt passes uncounted: the enhancer
        refuses it itself, without calling out."""
        if isinstance(text, str) and not text.strip():
            return text
        checked = validate_prompt_text(text)
        self._count(self.enhancer_limiter, client, session_key)
        return checked

    def _count(self, limiter: VisitorLimiter, client: str, session_key: str, cost: int = 1) -> None:
        """One request (``cost`` requests' worth) against the visitor's address and session; Refused with the wait
        when either is used up."""
        retry_after = limiter.hit(f"ip:{client}", f"session:{session_key}", cost=cost)
        if retry_after > 0:
            raise Refused("error.rate_limited", seconds=max(1, round(retry_after + 0.5)), limit=str(limiter.limit))

    def check_open(self, lang: str = "en") -> None:
        """Refuse new work while the server shuts down or the maintenance file exists (its text is the message)."""
        if self.drain.draining:
            raise Refused("error.restarting")
        notice = self.maintenance.current() if self.maintenance is not None else None
        if notice is not None:
            text = notice.text(lang)
            raise Refused("error.maintenance", notice=text) if text else Refused("maintenance.default")

    def validated(self, raw: Mapping[str, Any], images: Sequence[str] | None = None) -> GenerationRequest:
        """The typed request of /generate's values, or of /edit's with ``images`` (which has no negative prompt
        and no style to take)."""
        values = {name: raw.get(name) for name in API_FIELDS}
        if images is not None:
            values |= {"negative_prompt": "", "style": NO_STYLE}
        return validate_request(self.styles, **values, family=self.family, images=images)

    def _loggable(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Parameters for the session log: strict JSON (no NaN), valid UTF-8 (raw input may hold a lone surrogate,
        which would break every later write of the log), bounded in size."""

        def safe(value: Any) -> Any:
            if isinstance(value, (bool, int, type(None))) or (isinstance(value, float) and math.isfinite(value)):
                return value
            return str(value)[:500].encode("utf-8", "replace").decode("utf-8")

        return {name: safe(raw.get(name)) for name in API_FIELDS}

    def run(
        self,
        request: GenerationRequest,
        session: Session,
        queue_s: float,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        on_phase: PhaseCallback | None = None,
    ) -> Outcome:
        """Generate, save and record; the session's history changes only when everything succeeded.

        The job stops at its next step when the session ends (tab closed, New session, time-to-live); saving,
        recording and the history entry happen under the session's lock, and not at all once it ended. Once a
        shutdown's drain time is spent, a job that had not started is refused and a running one stops at its next
        step; both end with the "restarting" message."""
        if self.drain.stopping:
            session.record("refused", reason="error.restarting", queue_s=round(queue_s, 4), **request.to_dict())
            if self.observer is not None:
                self.observer.refused("restarting")
            raise EngineError("error.restarting")
        started = time.perf_counter()
        self._log_start(request)
        if self.observer is not None:
            self.observer.started(queue_s)
        ending: tuple[str, str] = ("failed", "generation_failed")  # what the observer hears if nothing else is known

        def stop_now() -> bool:
            return self.drain.stopping or session.disposed or (should_stop is not None and should_stop())

        try:
            try:
                result = self.engine.submit(request, on_step, stop_now, on_phase).result()
                with session.lock:
                    if session.disposed:  # ended during the last step: nothing of this job may stay
                        steps = request.num_inference_steps
                        raise GenerationStopped(steps, steps)
                    save_started = time.perf_counter()
                    files = self._save(result, session)
                    outcome = self._record(request, result, session, files, queue_s, started, save_started)
            except EngineError as exc:
                stopped = exc.key == "status.stopped"
                session.record(
                    "stopped" if stopped else "failed", reason=exc.key, queue_s=round(queue_s, 4), **request.to_dict()
                )
                log.info("generation ended: %s after %.2f s", exc.key, time.perf_counter() - started)
                if stopped and self.drain.stopping:
                    ending = ("stopped", "shutdown")
                    raise EngineError("error.restarting") from None
                ending = ("stopped", "visitor") if stopped else ("failed", reason_of(exc))
                raise
            except InputError as exc:  # too many tokens, found once the tokenizer ran: worded like any bad input
                session.record("refused", reason=exc.key, **request.to_dict())
                ending = ("refused", reason_of(exc))
                raise
            except Exception:  # noqa: BLE001 - a bug or a full disk: a clear message, the traceback only in the log
                log.exception("generation failed outside the pipeline after %.2f s", time.perf_counter() - started)
                session.record(
                    "failed", reason="error.generation_failed", queue_s=round(queue_s, 4), **request.to_dict()
                )
                raise EngineError("error.generation_failed") from None
            ending = ("done", "")
        finally:
            if self.observer is not None:
                if ending[0] == "done":
                    t = result.timings
                    self.observer.ended("done", "", t.model_s, t.per_step_s, len(outcome.files))
                else:
                    self.observer.ended(*ending)
        t = result.timings
        log.info(
            "generated %d image(s) %dx%d, %d steps on %s: model %.2f s, total %.2f s",
            len(outcome.files),
            request.width,
            request.height,
            request.num_inference_steps,
            result.worker,
            t.model_s,
            outcome.details["timings"]["total_s"],
        )
        return outcome

    def _record(
        self,
        request: GenerationRequest,
        result: GenerationResult,
        session: Session,
        files: list[str],
        queue_s: float,
        started: float,
        save_started: float,
    ) -> Outcome:
        """The details, the session log line and the history entry of a finished job (under the session's lock)."""
        save_s = time.perf_counter() - save_started
        t = result.timings
        timings = round_timings(
            queue_s=queue_s,
            load_wait_s=t.load_wait_s,
            model_s=t.model_s,
            per_step_s=t.per_step_s,
            save_s=save_s,
            total_s=queue_s + (time.perf_counter() - started),
        )
        details = {
            "parameters": request.to_dict(),
            "seed": result.seed,
            "final_prompt": result.final.prompt,
            "final_negative_prompt": result.final.negative_prompt,
            "model": self.model_name(),
            "family": self.family.display_name,
            "worker": result.worker,
            "timings": timings,
        }
        event = "edited" if request.images else "generated"
        session.record(event, **request.to_dict(), seed_used=result.seed, images=len(files), timings=timings)
        entry = HistoryEntry(
            id=uuid.uuid4().hex,
            created=time.time(),
            files=files,
            request=request.to_dict(),
            seed=result.seed,
            timings=timings,
        )
        if session.keep_history:
            session.drop_expired(self.settings.file_ttl)
            session.add_history(entry)
        return Outcome(files=files, seed=result.seed, details=details)

    def _save(self, result: GenerationResult, session: Session) -> list[str]:
        parameters = None
        if session.embed_metadata:
            parameters = a1111_parameters(
                result.final.prompt,
                result.final.negative_prompt,
                result.request,
                result.seed,
                self.model_name(),
                self.family.sampler,
            )
        if not session.keep_history:
            session.clear_history()  # only the result on screen is kept, until the next one
        return [str(save_png(image, session.new_file(), parameters)) for image in result.images]

    def _log_start(self, request: GenerationRequest) -> None:
        if self.settings.log_prompts:
            log.info(
                "generating: prompt=%r negative=%r style=%s", request.prompt, request.negative_prompt, request.style
            )
