"""Train the bundled demo VLM (`reroute train-demo-model`).

Training is a pure function of the seed (and of ``--threads``: CPU kernels split their reductions
by thread count, so bit-exact reproduction needs the same thread count and CPU type). Data are
generated on the fly from the seed; nothing is downloaded. Two stages, as LLaVA trains:

1. *Vision* (``vision_steps``): the vision tower and projector learn, through training-only
   linear probes (``PatchProbes``), to make every projected visual token name its object's
   colour, shape, size and box edges (or "background"): 144 labels per image, so this stage
   costs a few minutes.
2. *Whole model* (``steps``): LLaVA-style multi-turn conversations (``turns`` questions about
   one image), LM loss on the answers, the probe loss kept on, and supervised attention
   (``ATTENTION_PLAN``): at the last prompt position, early heads read the words naming the
   referred object (and a relation's anchor), a middle head looks at the anchor's patches and
   late heads at the referred object's patches. ``AttentionProbe`` (SDPA plus the supervised
   heads' queries and keys) computes that loss without eager attention. ``DescriptionProbes``
   make the last prompt position's hidden state name the attributes the question asks about.
   The first ``curriculum`` fraction of the steps uses 1-3 object scenes.

The saved model is the stock ``LlavaForConditionalGeneration``: probes and the attention
function exist only during training. Held-out splits are scored by `reroute.demo.evaluation`.

Modules, one job each: ``config`` (``TrainConfig``), ``data`` (encoding conversations, locating
each turn's words), ``probes`` (stage 1's per-patch probes), ``attention`` (supervised
attention), ``description`` (the description read-out), ``optim`` (schedule, AdamW groups),
``loop`` (the two stages, the final evaluation, the log).
"""

from reroute.demo.training.config import TrainConfig
from reroute.demo.training.loop import pretrain_vision, setup_logging, train

__all__ = ["TrainConfig", "pretrain_vision", "setup_logging", "train"]
