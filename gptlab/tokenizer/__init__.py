"""Tokenizers (book chapter 2): GPT-2's BPE, built offline (``bpe``), a byte-level one for tiny runs,
a model directory's own ``tokenizer.json`` (``hf``: Llama, Qwen...), and a GGUF file's (``gguf``,
with its chat template: ``chat_template``). ``train_tokenizer`` learns a byte-level BPE on your text
(``train``: Hugging Face's trainer, or ``bpe_train``'s from-scratch one, which also encodes with
GPT-2's files as tiktoken does); ``token_stats`` measures compression. ``get_tokenizer`` picks one by name or path;
``gguf_vocab`` gives any of them as GGUF fields; ``TextEncoding`` turns texts into a classifier's
padded batches."""

from gptlab.tokenizer.bpe import (
    END_OF_TEXT,
    GPT2_EOT_ID,
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    gpt2_encoding,
)
from gptlab.tokenizer.bpe_train import ByteLevelBPE
from gptlab.tokenizer.chat_template import ChatTemplate
from gptlab.tokenizer.encoding import PadTo, TextEncoding, check_pad_to
from gptlab.tokenizer.gguf import GGUFTokenizer, gguf_vocab
from gptlab.tokenizer.gguf_vocab import GGUFVocab
from gptlab.tokenizer.hf import HF_TOKENIZER_FILE, HFTokenizer
from gptlab.tokenizer.load import TOKENIZERS, get_tokenizer
from gptlab.tokenizer.stats import TokenStats, text_bytes, token_stats
from gptlab.tokenizer.train import train_tokenizer

__all__ = [
    "END_OF_TEXT", "GPT2_EOT_ID", "HF_TOKENIZER_FILE", "TOKENIZERS", "BPETokenizer", "ByteLevelBPE", "ByteTokenizer",
    "ChatTemplate", "GGUFTokenizer", "GGUFVocab", "HFTokenizer", "PadTo", "TextEncoding", "TokenStats", "Tokenizer",
    "check_pad_to", "get_tokenizer", "gguf_vocab", "gpt2_encoding", "text_bytes", "token_stats", "train_tokenizer",
]
