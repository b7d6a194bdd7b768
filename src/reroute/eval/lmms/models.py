"""What makes an lmms-eval HF model class route: `RoutedMixin` (the classes are in `llava_hf`, `qwen2_vl`,
`qwen2_5_vl`, `qwen3_vl`, `internvl_hf`, `mistral3_vl`).

Prompts, chat templates, generation settings and answer parsing stay lmms-eval's: each
class here subclasses lmms-eval's class of the same family and changes three things only:

* the routing keys of ``--model_args`` are taken out (and checked) before the parent sees them,
  and ``min_pixels`` / ``max_pixels`` default to the family's, the paper's (`set_pixel_args`);
* after the parent loaded the model, `reroute.apply` routes it (the unwrapped model, so
  ``accelerate launch`` data parallelism wraps nothing of ours);
* after each ``generate_until`` / ``loglikelihood`` call, what the prefills decided is logged
  through lmms-eval's own metric log (it lands in the results file under ``throughput``:
  ``avg_reroute_avg_T``, ...), and ``clean()`` restores and releases the model first.

These modules import lmms-eval; nothing else in `reroute` does (lmms-eval finds the classes
through the ``lmms_eval.models`` entry point, see `reroute.eval.lmms.manifests`). One module
per family, so that asking for one family imports only that family's lmms-eval module.
"""

from __future__ import annotations

from typing import Any

from lmms_eval.models.model_utils.gen_metrics import log_metrics
from loguru import logger as eval_logger

from reroute.eval.lmms.args import RoutingArgs, set_pixel_args
from reroute.eval.lmms.session import RoutingSession
from reroute.eval.setup import instruction_encoder


class RoutedMixin:
    """Put before an lmms-eval HF model class: routes the model it loads (see the module docstring)."""

    routing: RoutingSession | None
    #: the evaluation family whose protocol's pixel bounds apply (`reroute.backbones.evaluation_protocols`);
    #: None for a family that declares no protocol (Mistral 3): the parent's own arguments, untouched
    family: str | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        routing_args = RoutingArgs.pop_from(kwargs)  # checked before the (slow) model load
        if self.family is not None:
            set_pixel_args(kwargs, self.family)
        self._prepare_kwargs(kwargs)
        super().__init__(*args, **kwargs)
        self.routing = None
        if routing_args is not None:
            config = routing_args.resolve(self.model)
            encoder = None
            if routing_args.clip is not None:  # CDPruner's relevance as published: CLIP beside the model
                encoder = instruction_encoder(routing_args.clip, self.model, self.tokenizer)
            self.routing = RoutingSession(self.model, config, encoder)
            eval_logger.info(f"reroute: {routing_args.describe()} -> {config}")

    def _prepare_kwargs(self, kwargs: dict[str, Any]) -> None:
        """Adjust the parent's keyword arguments before it runs (nothing by default)."""

    def generate_until(self, requests):
        results = super().generate_until(requests)
        self._log_routing(len(requests))
        return results

    def loglikelihood(self, requests):
        results = super().loglikelihood(requests)
        self._log_routing(len(requests))
        return results

    def _log_routing(self, num_requests: int) -> None:
        if self.routing is None or not self.routing.active:
            return
        stats = self.routing.take_stats()
        if stats.samples < num_requests:
            # lmms-eval's classes log a failed generation and answer "" instead of raising.
            eval_logger.warning(
                f"reroute: {num_requests} requests but {stats.samples} routed prefills: "
                "the others failed (see the errors above) and were answered with empty text"
            )
        if stats.samples:
            # total_* = 0: this entry adds nothing to lmms-eval's token and time totals.
            log_metrics(total_elapsed_time=0.0, total_gen_tokens=0, avg_speed=0.0, additional_metrics=stats.as_metrics())

    def clean(self) -> None:
        # Restore and let go of the model before lmms-eval deletes its own references, so the
        # memory is really freed (and a model object someone else holds is stock again).
        if self.routing is not None:
            self.routing.stop()
        super().clean()
