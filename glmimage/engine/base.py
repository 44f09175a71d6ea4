"""What every engine (local devices, a Ray Serve pool) promises the service: a request in, a future result out.

The UI and the service talk only to :class:`Engine`, so any backend can stand behind them. Failures come back as
:class:`~glmimage.errors.EngineError` with a message key the web layer words for the visitor.
"""

from __future__ import annotations

import concurrent.futures
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import EngineError
from ..limits import MAX_SEED
from ..requests import GenerationRequest
from ..styles import StyledPrompt

StepCallback = Callable[[int, int], None]  # (steps done, total steps)
StopCheck = Callable[[], bool]


class GenerationStopped(EngineError):
    """The visitor pressed Stop or went away: the job ended between two steps and freed the GPU."""

    def __init__(self, steps_done: int, total: int) -> None:
        super().__init__("status.stopped", step=steps_done, total=total)


@dataclass(frozen=True)
class Timings:
    """Seconds spent in each part of one generation (the UI adds queue wait, saving and total)."""

    load_wait_s: float
    model_s: float
    per_step_s: float
    steps: int


@dataclass
class GenerationResult:
    request: GenerationRequest
    seed: int
    final: StyledPrompt
    images: list[Any]  # PIL images
    timings: Timings
    extra: dict[str, Any] = field(default_factory=dict)
    worker: str = ""  # where it ran (a device, or a Ray replica); copied into the details JSON


class Engine(Protocol):
    """What the UI needs from a backend."""

    def submit(
        self, request: GenerationRequest, on_step: StepCallback | None = None, should_stop: StopCheck | None = None
    ) -> concurrent.futures.Future[GenerationResult]: ...

    def count_tokens(self, text: str) -> int | None: ...

    def close(self) -> None: ...


def pick_seed(request: GenerationRequest) -> int:
    """The seed to use: the request's, or a fresh random one that is reported back so the image can be remade."""
    return secrets.randbelow(MAX_SEED + 1) if request.randomize_seed else request.seed


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()
