"""The bundled demo: a small LLaVA-architecture VLM trained on a synthetic grounding + VQA task.

``synthetic`` generates the scenes and questions, ``modeling`` builds the tokenizer, processor
and model, ``train`` trains and evaluates it; the shipped weights live in ``demo/model/``.
"""
