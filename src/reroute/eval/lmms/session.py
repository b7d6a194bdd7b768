"""One routed evaluation: `reroute.apply` on the loaded model, what its prefills decided, and the undo.

lmms-eval's model classes call ``self.model.generate`` many times per request type; the
routing handle keeps only the last prefill's trace. A forward hook on the model notices
each new trace (a routed prefill sets a new `Trace` object; decode steps keep it), so every
prefill of an evaluation is counted, whatever the batch size.

`stop` restores the model, removes the hook and lets go of the model, so that lmms-eval's
``clean()`` (which deletes the ``nn.Module`` attributes of its model object to free memory)
frees it for real: nothing here keeps it alive afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

import reroute
from reroute.config import RoutingConfig
from reroute.runtime.trace import Trace


@dataclass(frozen=True)
class RoutingStats:
    """What the prefills since the last `RoutingSession.take_stats` decided.

    samples: prompts prefilled (one per sample of every routed forward).
    routed_samples: those that had visual tokens (the others ran unrouted).
    avg_T: mean avg_T over the routed samples (docs/semantics.md §1); 0 when none was routed.
    num_visual: mean visual-token count of the routed samples' prompts.
    """

    samples: int
    routed_samples: int
    avg_T: float  # noqa: N815 - the paper's name
    num_visual: float

    def as_metrics(self) -> dict[str, float | int]:
        """The numbers under the names they get in lmms-eval's results (``throughput``: ``avg_<name>``)."""
        return {
            "reroute_avg_T": self.avg_T,
            "reroute_num_visual": self.num_visual,
            "reroute_samples": self.samples,
            "reroute_routed_samples": self.routed_samples,
        }


class RoutingSession:
    """`reroute.apply` for the length of an evaluation, counting what every prefill decided."""

    def __init__(self, model: nn.Module, config: RoutingConfig, instruction_encoder: object = None) -> None:
        self.config = config
        self._handle: reroute.RoutingHandle | None = reroute.apply(model, config, instruction_encoder=instruction_encoder)
        self._hook = model.register_forward_hook(self._after_forward)
        self._last_trace: Trace | None = None
        self._traces: list[Trace] = []

    @property
    def active(self) -> bool:
        return self._handle is not None

    @property
    def handle(self) -> reroute.RoutingHandle:
        if self._handle is None:
            raise RuntimeError("this routing session was stopped (lmms-eval's clean() ran): the model is restored and released")
        return self._handle

    def _after_forward(self, module: nn.Module, args, output) -> None:
        trace = self._handle.trace if self._handle is not None else None
        if trace is not None and trace is not self._last_trace:
            self._last_trace = trace
            self._traces.append(trace)

    def take_stats(self) -> RoutingStats:
        """Stats of the prefills since the previous call (or the start); starts a new interval."""
        samples = [s for trace in self._traces for s in trace.samples]
        self._traces = []
        routed = [s for s in samples if s.routed]
        return RoutingStats(
            samples=len(samples),
            routed_samples=len(routed),
            avg_T=sum(s.avg_T for s in routed) / len(routed) if routed else 0.0,
            num_visual=sum(s.num_visual for s in routed) / len(routed) if routed else 0.0,
        )

    def stop(self) -> None:
        """Restore the model exactly, remove the hook, release the model (idempotent)."""
        if self._handle is None:
            return
        self._hook.remove()
        self._handle.restore()
        self._handle = None
        self._last_trace = None
