"""``GGUFVocab``: a tokenizer as GGUF stores it (``tokenizer.ggml.*``), the contract between the GGUF
tokenizer reader (``tokenizer.gguf``) and the GGUF writer (``checkpoints.gguf``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GGUFVocab:
    """The ``tokenizer.ggml.*`` fields of a byte-level BPE, plus the chat template.

    ``tokens[i]`` is token ``i`` in GPT-2's byte-to-unicode alphabet, ``token_types[i]`` its
    ``gguf.TokenType`` value (1 normal, 3 control, 4 user-defined...), ``merges`` the BPE merges
    as ``"left right"`` in priority order.
    """

    #: ``tokenizer.ggml.model``: ``gpt2`` (byte-level BPE) is the one gptlab writes and reads.
    model: str
    #: ``tokenizer.ggml.pre``: the pre-tokenizer's name in llama.cpp (``gpt-2``, ``smollm``, ``llama-bpe``...).
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    eos_id: int
    bos_id: int | None = None
    pad_id: int | None = None
    unknown_id: int | None = None
    add_bos: bool = False
    #: ``tokenizer.chat_template``: a Jinja template of a conversation, or ``None``.
    chat_template: str | None = None
    #: Ids that end generation besides ``eos_id`` (GGUF: ``tokenizer.ggml.eot_token_id``, ``eom_token_id``).
    extra_stop_ids: tuple[int, ...] = ()
