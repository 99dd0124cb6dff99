"""``LLM``: open any model for inference, with everything that decides how it is prompted and stopped.

One object for every inference entry point (``gptlab-generate``, ``-chat``, ``-respond``,
``-eval``, ``-export``, and the library)::

    from gptlab import LLM

    llm = LLM.load("smollm2-135m-instruct")           # or a run, an export, a .ckpt, a GGUF, gpt2
    print(llm.generate("The capital of France is", max_new_tokens=10))
    print(llm.chat([{"role": "user", "content": "What is the capital of France?"}]))

``LLM.load`` finds, for its source:

* the weights (``gptlab.checkpoints.load_pretrained``);
* the tokenizer: the caller's, else the source's own (a GGUF's vocabulary, a directory's or a
  run export's ``tokenizer.json``, the run's ``data.tokenizer``), else ``byte`` for a 257-token
  vocabulary, else GPT-2's; a PEFT adapter directory without a tokenizer of its own has its base
  model's (and its base's prompt format, unless it records its own);
* the prompt format (``gptlab.prompts.PromptStyle``): the caller's, else the one the run recorded
  (``prompt.json``), else the tokenizer's own chat template, else Alpaca;
* the stop ids: the tokenizer's (a chat model's end-of-turn token and its EOS), else its end-of-text;
* for a run, its recorded data settings (``data``), so the same split can be answered or scored.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gptlab.checkpoints import load_pretrained
from gptlab.checkpoints.peft import adapter_base, is_peft_adapter
from gptlab.errors import ConfigError
from gptlab.generate import stream_tokens
from gptlab.inference.streaming import StopStreamer, TextStreamer
from gptlab.model.gpt import GPT
from gptlab.named_models import NAMED_MODELS, resolve_named_model
from gptlab.prompts import ALPACA, PromptStyle, resolve_style, style_from_record
from gptlab.runs import RunFiles
from gptlab.tokenizer import TOKENIZERS, ByteTokenizer, Tokenizer, get_tokenizer


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: ``temperature=0`` is greedy; a ``seed`` makes sampling repeatable."""

    max_new_tokens: int = 50
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k <= 0:
            raise ConfigError(f"top_k must be a positive integer, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must lie in (0, 1], got {self.top_p}")


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else the CPU; anything else is checked as a torch device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"device {device!r} is not a valid device: {err}") from None


@dataclass
class LLM:
    """A model ready for inference: weights in eval mode, its tokenizer, prompt format and stop ids."""

    model: GPT
    tokenizer: Tokenizer
    style: PromptStyle
    stop_ids: tuple[int, ...]
    source: str
    #: The run's recorded ``data`` settings (empty outside a run): split ratios, seed, data path...
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, source: str | Path, tokenizer: str | None = None, prompt_style: str | None = None,
             device: str = "auto", dtype: torch.dtype | None = None) -> LLM:
        """Open ``source``: a GPT-2 or named model, an HF directory, a gptlab export, a run, a ``.ckpt`` or a GGUF."""
        text = str(source)
        local = _local_path(text)
        run = RunFiles.find(local)
        data = run.data_settings()
        model = load_pretrained(text).to(pick_device(device)).eval()
        if dtype is not None:
            model = model.to(dtype)
        # A PEFT adapter without a tokenizer of its own has its base model's; a prompt format it
        # records (gptlab-export --to peft writes prompt.json) comes before the base's.
        own, own_run, own_data, records = local, run, data, [run.prompt_record()]
        if is_peft_adapter(local) and run.tokenizer_dir() is None:
            own = _local_path(adapter_base(local))
            own_run = RunFiles.find(own)
            own_data = own_run.data_settings()
            records.append(own_run.prompt_record())
        tok = get_tokenizer(tokenizer or _own_tokenizer(own, own_run, own_data, model.cfg.vocab_size))
        if tok.vocab_size > model.cfg.vocab_size:
            raise ConfigError(
                f"tokenizer {tok.name!r} has {tok.vocab_size} ids but the model's vocab_size is "
                f"{model.cfg.vocab_size}; pick the tokenizer the model was trained with "
                f"({', '.join(TOKENIZERS)}, a directory with a tokenizer.json, or a .gguf)"
            )
        record = next((r for r in records if r is not None), None)
        style = _prompt_style(prompt_style, record, tok, model.cfg.name)
        stops = tuple(getattr(tok, "stop_ids", None) or (tok.eot_id,))
        return cls(model, tok, style, stops, text, data)

    @property
    def device(self) -> torch.device:
        return self.model.tok_emb.weight.device

    def generator(self, seed: int | None) -> torch.Generator | None:
        """A generator seeded for repeatable sampling (``None`` without a seed)."""
        if seed is None:
            return None
        torch.manual_seed(seed)
        return torch.Generator(device=self.device).manual_seed(seed)

    def stream_ids(self, prompt_ids: Sequence[int], sampling: Sampling, stop: bool = True,
                   generator: torch.Generator | None = None) -> Iterator[int]:
        """The generated ids one by one, ending before a stop id (when ``stop``)."""
        idx = torch.tensor([list(prompt_ids) or [self.tokenizer.eot_id]], dtype=torch.long, device=self.device)
        generator = generator if generator is not None else self.generator(sampling.seed)
        stop_ids = self.stop_ids if stop else None
        for next_id in stream_tokens(self.model, idx, sampling.max_new_tokens, temperature=sampling.temperature,
                                     top_k=sampling.top_k, top_p=sampling.top_p, eos_id=stop_ids,
                                     generator=generator, vocab_limit=self.tokenizer.vocab_size):
            token = int(next_id[0, 0])
            if stop_ids is not None and token in stop_ids:
                return
            yield token

    def stream_text(self, prompt_ids: Sequence[int], sampling: Sampling, stop: bool = True,
                    generator: torch.Generator | None = None) -> Iterator[str]:
        """The generated text piece by piece, whole characters only."""
        streamer = TextStreamer(self.tokenizer)
        for token in self.stream_ids(prompt_ids, sampling, stop, generator):
            text = streamer.push(token)
            if text:
                yield text
        tail = streamer.flush()
        if tail:
            yield tail

    def stream(self, prompt: str, sampling: Sampling | None = None, stop: bool = True) -> Iterator[str]:
        """The continuation of ``prompt`` as it is generated."""
        return self.stream_text(self.tokenizer.encode(prompt), sampling or Sampling(), stop)

    def generate(self, prompt: str, max_new_tokens: int = 50, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, stop: bool = True) -> str:
        """The continuation of ``prompt`` (without the prompt), up to a stop id when ``stop``."""
        return "".join(self.stream(prompt, Sampling(max_new_tokens, temperature, top_k, top_p, seed), stop))

    def chat_stream(self, messages: Sequence[Mapping[str, str]], sampling: Sampling | None = None,
                    generator: torch.Generator | None = None, stop: bool = True) -> Iterator[str]:
        """The assistant's reply to ``messages`` in the model's prompt format, ending at its format's
        end of turn, and at a stop id when ``stop``."""
        prompt_ids = self.tokenizer.encode(self.style.render(messages))
        # The prompt ends in a newline, so a reply that itself opens a new section stops at once.
        stopper = StopStreamer([self.style.stop], context="\n")
        for piece in self.stream_text(prompt_ids, sampling or Sampling(max_new_tokens=256), stop, generator):
            out = stopper.push(piece)
            if out:
                yield out
            if stopper.stopped:
                return
        tail = stopper.flush()
        if tail:
            yield tail

    def chat(self, messages: Sequence[Mapping[str, str]], max_new_tokens: int = 256, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> str:
        """The assistant's reply to a conversation (``role``/``content`` dicts)."""
        return "".join(self.chat_stream(messages, Sampling(max_new_tokens, temperature, top_k, top_p, seed)))


def _local_path(source: str) -> Path:
    """Where a source's files are: a named model's GGUF file or Hub directory, else the path itself."""
    return resolve_named_model(source) if source in NAMED_MODELS else Path(source).expanduser()


def _own_tokenizer(local: Path, run: RunFiles, data: dict[str, Any], vocab_size: int) -> str:
    """The tokenizer that came with the model (see ``LLM``), as a ``get_tokenizer`` name; ``data``
    is the run's recorded data settings."""
    if local.suffix == ".gguf":
        return str(local)
    own = run.tokenizer_dir()
    if own is not None:
        return str(own)
    recorded = data.get("tokenizer")
    if isinstance(recorded, str) and recorded:
        return recorded
    return ByteTokenizer.name if vocab_size == ByteTokenizer.vocab_size else "gpt2"


def _prompt_style(name: str | None, record: dict[str, Any] | None, tokenizer: Tokenizer,
                  model_name: str) -> PromptStyle:
    """The prompt format (see ``LLM``): asked for, recorded (``record``), the tokenizer's chat template, or Alpaca."""
    if name is not None:
        return resolve_style(name, tokenizer)  # ``chat_template``: the tokenizer's own, over a recorded style
    if record is not None:
        return style_from_record(record)
    template = getattr(tokenizer, "chat_template", None)
    if template is not None:
        return PromptStyle.from_chat_template(model_name, template.source, template.bos_token, template.eos_token)
    return ALPACA
