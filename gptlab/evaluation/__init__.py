"""Measuring models and their responses: perplexity, ROUGE-L / BLEU, an LLM judge, reports.

``gptlab-respond`` (``responses``) writes a model's answers; ``gptlab-eval`` scores them
(``text_metrics``, ``judge``) and writes the report (``report``), or measures a model's
perplexity (``perplexity``).
"""
