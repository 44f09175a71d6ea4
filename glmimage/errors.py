"""The one error type of GLM Image: a message key from ``assets/i18n`` and the values it needs.

The core raises it (or one of the subclasses below, which only say what kind of problem it is, so callers can
catch by kind); the web layer translates ``key`` with ``params`` into the visitor's language once, at the edge.
"""

from __future__ import annotations


class AppError(Exception):
    """Something a visitor or operator should read. ``key`` names the message, ``params`` fills it in.

    ``message`` is an English text for logs and for callers without a translator; it defaults to the key.
    """

    def __init__(self, key: str, message: str = "", **params: object) -> None:
        super().__init__(message or key)
        self.key = key
        self.params = params


class InputError(AppError, ValueError):
    """Bad input: the request is refused before it may queue, naming the field and the allowed range."""


class Refused(AppError):
    """A request refused before queuing for a reason other than bad input (rate limit, too many jobs)."""


class EngineError(AppError, RuntimeError):
    """A generation failed or was stopped while it ran."""


class ModelNotReady(AppError, RuntimeError):
    """The model failed to load (``key`` names the reason) or did not load in time; ``params['detail']`` says
    what went wrong, for the log."""

    @property
    def detail(self) -> str:
        return str(self.params.get("detail", ""))


class GenerationStopped(EngineError):
    """The visitor pressed Stop, cancelled, went away or ended the session: the job ended between two steps."""

    def __init__(self, steps_done: int, total: int) -> None:
        super().__init__("status.stopped", step=steps_done, total=total)
