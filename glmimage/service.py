"""What happens between a press of Generate and the images on the page, without Gradio.

Admission (rate limits, per-visitor queue cap, input validation) runs before a job may queue; ``run`` then asks
the engine, saves the images into the session's folder, and records the timings, the history entry and the log
line. Every refusal or failure is an exception with a message key; the UI only translates and shows it.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import Settings
from .engine.base import Engine, GenerationResult, StepCallback, StopCheck
from .errors import EngineError, InputError, Refused
from .ratelimit import SlidingWindowLimiter
from .requests import GenerationRequest, check_prompt_tokens, validate_request
from .sessions import HistoryEntry, Session, a1111_parameters, save_png
from .styles import StyleBook

log = logging.getLogger("glmimage.service")

API_FIELDS = (
    "prompt",
    "negative_prompt",
    "style",
    "width",
    "height",
    "num_images",
    "seed",
    "randomize_seed",
    "num_inference_steps",
    "guidance_scale",
)


@dataclass
class Outcome:
    files: list[str]
    seed: int
    details: dict[str, Any]


def round_timings(**values: float) -> dict[str, float]:
    return {name: round(value, 4) for name, value in values.items()}


class GenerationService:
    def __init__(self, settings: Settings, engine: Engine, styles: StyleBook, model_name: Callable[[], str]) -> None:
        """``model_name`` is asked at each run: the model is chosen while the page is already up."""
        self.settings = settings
        self.engine = engine
        self.styles = styles
        self.model_name = model_name
        self.limiter = SlidingWindowLimiter(settings.parsed_rate_limit)

    def admit(
        self,
        raw: Mapping[str, Any],
        client: str,
        session_key: str,
        jobs_for_client: int,
        session: Session | None = None,
    ) -> GenerationRequest:
        """Validate and apply the limits; raises InputError or Refused. Cheap: it runs before the queue."""
        try:
            request = self.validated(raw)
            # The token limit too, before queuing, once the tokenizer is loaded (the engine checks it again).
            final = self.styles.apply(request.style, request.prompt, request.negative_prompt)
            check_prompt_tokens(final.prompt, final.negative_prompt, self.engine.count_tokens)
            if self.settings.max_jobs_per_client and jobs_for_client >= self.settings.max_jobs_per_client:
                raise Refused("error.too_many_jobs", max=self.settings.max_jobs_per_client)
            retry_after = self.limiter.check(f"ip:{client}", f"session:{session_key}")
            if retry_after > 0:
                raise Refused(
                    "error.rate_limited",
                    seconds=max(1, round(retry_after + 0.5)),
                    limit=str(self.settings.parsed_rate_limit),
                )
        except (InputError, Refused) as exc:
            log.info("refused request: %s", exc.key)
            if session is not None:
                session.record("refused", reason=exc.key, **self._loggable(raw))
            raise
        return request

    def validated(self, raw: Mapping[str, Any]) -> GenerationRequest:
        return validate_request(self.styles, **{name: raw.get(name) for name in API_FIELDS})

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
    ) -> Outcome:
        """Generate, save and record; the session's history changes only when everything succeeded."""
        started = time.perf_counter()
        self._log_start(request)
        try:
            result = self.engine.submit(request, on_step, should_stop).result()
            save_started = time.perf_counter()
            files = self._save(result, session)
        except EngineError as exc:
            session.record(
                "failed" if exc.key != "status.stopped" else "stopped",
                reason=exc.key,
                queue_s=round(queue_s, 4),
                **request.to_dict(),
            )
            log.info("generation ended: %s after %.2f s", exc.key, time.perf_counter() - started)
            raise
        except InputError as exc:  # too many tokens, found once the tokenizer ran: worded like any bad input
            session.record("refused", reason=exc.key, **request.to_dict())
            raise
        except Exception:  # noqa: BLE001 - a bug or a full disk: a clear message, the traceback only in the log
            log.exception("generation failed outside the pipeline after %.2f s", time.perf_counter() - started)
            session.record("failed", reason="error.generation_failed", queue_s=round(queue_s, 4), **request.to_dict())
            raise EngineError("error.generation_failed") from None
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
            "worker": result.worker,
            "timings": timings,
        }
        session.record("generated", **request.to_dict(), seed_used=result.seed, images=len(files), timings=timings)
        entry = HistoryEntry(
            id=uuid.uuid4().hex,
            created=time.time(),
            files=files,
            request=request.to_dict(),
            seed=result.seed,
            final_prompt=result.final.prompt,
            final_negative_prompt=result.final.negative_prompt,
            timings=timings,
        )
        if session.keep_history:
            session.drop_expired(self.settings.file_ttl)
            session.add_history(entry)
        log.info(
            "generated %d image(s) %dx%d, %d steps: model %.2f s, total %.2f s",
            len(files),
            request.width,
            request.height,
            request.num_inference_steps,
            t.model_s,
            timings["total_s"],
        )
        return Outcome(files=files, seed=result.seed, details=details)

    def _save(self, result: GenerationResult, session: Session) -> list[str]:
        parameters = None
        if session.embed_metadata:
            parameters = a1111_parameters(
                result.final.prompt, result.final.negative_prompt, result.request, result.seed, self.model_name()
            )
        if not session.keep_history:
            session.clear_history()  # only the result on screen is kept, until the next one
        return [str(save_png(image, session.new_file(), parameters)) for image in result.images]

    def _log_start(self, request: GenerationRequest) -> None:
        if self.settings.log_prompts:
            log.info(
                "generating: prompt=%r negative=%r style=%s", request.prompt, request.negative_prompt, request.style
            )
