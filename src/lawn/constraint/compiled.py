"""Optional fused path: the reference math of :mod:`lawn.constraint` compiled by ``torch.compile`` (inductor).

Inductor fuses each tensor's reductions with its update (per row: row by row, while the row is in cache),
which no eager formulation can. The price is compile time at the first constrained step (seconds on CPU, where
inductor generates and compiles C++) and a dependence on the compiler: if compiling fails, a warning is issued
once and :mod:`lawn.constraint.foreach` is used from then on.

The projection and the retraction are compiled separately, once per list signature (granularity, and the
shape, dtype and device of every tensor): a training loop compiles once per param group, and again only if
the set of tensors that have gradients changes. Dynamo allows a function ``recompile_limit`` (default 8)
signatures; past that, new signatures run on the foreach path rather than on dynamo's slow eager fallback.
Inside an outer ``torch.compile`` (e.g. of the whole ``step``) the reference is traced into the outer graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lawn.constraint import reference
from lawn.constraint._warn import warn_at_caller
from lawn.constraint.foreach import foreach_project_onto_tangent_, foreach_retract_
from lawn.constraint.reference import Granularity


class _Compiled:
    """One function compiled lazily, with its own budget of signatures and a clean fallback."""

    failed: bool = False  # shared: once the compiler fails, nothing is compiled again in this process

    def __init__(self, function: Callable[..., None], fallback: Callable[..., None]) -> None:
        self.function, self.fallback = function, fallback
        self.compiled: Callable[..., None] | None = None
        self.signatures: set[tuple[Any, ...]] = set()

    def __call__(self, tensors: list[torch.Tensor], others: list[torch.Tensor], granularity: Granularity) -> None:
        if not tensors:
            return
        if torch.compiler.is_compiling():
            self.function(tensors, others, granularity)
            return
        signature = (granularity, *((t.shape, t.dtype, t.device) for t in tensors))
        if _Compiled.failed or (signature not in self.signatures and len(self.signatures) >= _budget()):
            self.fallback(tensors, others, granularity)
            return
        try:
            if self.compiled is None:
                self.compiled = torch.compile(self.function, fullgraph=True, dynamic=False)
            self.compiled(tensors, others, granularity)
        except Exception as error:  # any compiler failure: warn once, then stay on the foreach path
            _Compiled.failed = True
            warn_at_caller(
                f"lawn: torch.compile of the norm constraint failed ({type(error).__name__}: {error}); "
                "using the foreach path instead",
            )
            self.fallback(tensors, others, granularity)
            return
        self.signatures.add(signature)


def _budget() -> int:
    import torch._dynamo  # noqa: F401  (loaded lazily: only the compiled path needs it)

    config = torch._dynamo.config
    return int(getattr(config, "recompile_limit", getattr(config, "cache_size_limit", 8)))


_project = _Compiled(reference.project_all_, foreach_project_onto_tangent_)
_retract = _Compiled(reference.retract_all_, foreach_retract_)


def compiled_project_onto_tangent_(
    grads: list[torch.Tensor], params: list[torch.Tensor], granularity: Granularity
) -> None:
    """In place: ``g ← g − (⟨g, w⟩ / ‖w‖²) · w`` for each pair, as one compiled graph."""
    _project(grads, [w.detach() for w in params], granularity)


def compiled_retract_(params: list[torch.Tensor], targets: list[torch.Tensor], granularity: Granularity) -> None:
    """In place: ``w ← w · (target / ‖w‖)`` for each pair, as one compiled graph."""
    _retract([w.detach() for w in params], targets, granularity)
