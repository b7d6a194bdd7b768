"""The bundled demo: a small LLaVA-architecture VLM trained on a synthetic grounding + VQA task.

``synthetic`` generates the scenes and questions, ``modeling`` builds the tokenizer, processor
and model, ``training`` trains it and ``evaluation`` scores its answers; the shipped weights
live in ``demo/model/``.
"""
