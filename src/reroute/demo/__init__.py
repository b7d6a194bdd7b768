"""The bundled demo: a small LLaVA-architecture VLM trained on a synthetic grounding + VQA task.

``synthetic`` generates the scenes and questions, ``modeling`` builds the tokenizer, processor
and model, ``training`` trains it and ``evaluation`` scores its answers; the shipped weights
live in ``demo/model/``. ``family`` registers the demo model as a family (its evaluation
protocol, ``--family demo``); ``lmms_task`` is a local lmms-eval task on its held-out scenes.
"""

from reroute.demo import family as _family  # noqa: F401  registers the demo family
