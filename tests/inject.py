"""Faults raised INSIDE a real pipeline call: a forward hook on a real transformer block raises at a chosen call.

What a pipeline does when a kernel fails, or the GPU runs out of memory, in the middle of denoising, on the tiny
model: the exception comes out of the transformer's forward, inside the pipeline's loop and its cache context,
as a real one would. Out of memory is a real ``torch.OutOfMemoryError`` raised here (there is no GPU to exhaust).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch


@contextmanager
def raising_in_transformer(
    pipe: Any, error: Callable[[], BaseException], at_call: int, state: dict[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """Raise ``error()`` from the first transformer block's forward at its ``at_call``-th call (2 calls a step:
    cond and uncond; the first block runs even on a cache hit). A new exception each time, as a real failure:
    one kept by the test would keep its traceback's frames alive. ``state["activations"]`` is a weak reference to
    an object the failing frame held, standing for its tensors."""
    state = {"calls": 0, "activations": None} if state is None else state

    class Activations:
        """Stands for the tensors a failing forward holds in its frame."""

    def hook(_module: torch.nn.Module, _args: Any, _output: Any) -> None:
        state["calls"] += 1
        if state["calls"] == at_call:
            activations = Activations()
            state["activations"] = weakref.ref(activations)
            raise error()

    handle = pipe.transformer.transformer_blocks[0].register_forward_hook(hook)
    try:
        yield state
    finally:
        handle.remove()


@contextmanager
def raising_in_every_worker(
    workers: list[Any], error: Callable[[], BaseException], at_call: int
) -> Iterator[dict[str, Any]]:
    """:func:`raising_in_transformer` on every worker's pipeline (the job may land on any), counting the calls of
    all of them together: meant for one job at a time."""
    state: dict[str, Any] = {"calls": 0, "activations": None}
    with ExitStack() as stack:
        for worker in workers:
            stack.enter_context(raising_in_transformer(worker.pipe, error, at_call, state))
        yield state
