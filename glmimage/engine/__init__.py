"""Engines: where a generation runs. ``base`` is the interface; ``local`` runs on this machine's devices."""

from .base import Engine, GenerationResult, GenerationStopped, Timings, pick_seed
from .local import LocalEngine

__all__ = ["Engine", "GenerationResult", "GenerationStopped", "LocalEngine", "Timings", "pick_seed"]
