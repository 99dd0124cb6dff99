"""``GptlabLM``: lm-evaluation-harness's model interface over ``LLM``, registered as ``gptlab``.

Any source ``LLM.load`` opens (a run, an export, a ``.ckpt``, a GGUF, a named model) is scored by
the harness as it is, with no conversion to Hugging Face's format first. The request handling
follows the harness's own ``HFLM`` so that both give the same numbers on the same weights:

* ``loglikelihood``: ``TemplateLM`` splits each (context, continuation) pair into tokens (the
  context's trailing spaces move to the continuation; an empty context becomes the prefix token);
  pairs are sorted longest first, batched right-padded, and a one-token continuation that shares
  its context with others reuses one forward pass (``Collator(group_by="contexts")``);
* ``loglikelihood_rolling``: the harness's ``get_rolling_token_windows`` / ``make_disjoint_window``
  cut a text into context-length windows that predict every token exactly once;
* ``generate_until``: left-padded batches decoded on gptlab's KV cache (``stream_tokens``), greedy
  unless ``do_sample``, ending at the model's stop ids, at ``max_gen_toks`` or once every row has
  written one of the ``until`` strings, and cut before the first of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from gptlab.errors import ConfigError
from gptlab.evaluation.responses import left_pad
from gptlab.generate import stream_tokens
from gptlab.inference import LLM

#: ``dtype=`` model argument names.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Tokens generated when a task sets no ``max_gen_toks`` (the harness's ``HFLM`` default).
DEFAULT_MAX_GEN_TOKS = 256

#: One scoring request: the strings (``None`` for a rolling window), context ids, continuation ids.
TokenRequest = tuple[tuple[str, str] | None, list[int], list[int]]


@register_model("gptlab")
class GptlabLM(TemplateLM):
    """Any gptlab model source as an lm-eval model: ``--model gptlab --model_args source=...``.

    Model arguments: ``source`` (required), ``batch_size``, ``device``, ``dtype`` (float32,
    bfloat16, float16; default as stored), ``max_length`` (default: the model's context length),
    ``max_gen_toks``, ``tokenizer`` and ``prompt_style`` (as for ``gptlab-generate``).
    """

    def __init__(self, source: str | LLM, batch_size: int | str = 1, device: str | None = None,
                 dtype: str | None = None, max_length: int | None = None,
                 max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, tokenizer: str | None = None,
                 prompt_style: str | None = None, max_batch_size: int | None = None) -> None:
        super().__init__()  # max_batch_size: the harness passes it for batch_size=auto, which is not searched here
        if dtype is not None and dtype not in DTYPES:
            raise ConfigError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}")
        self.llm = source if isinstance(source, LLM) else LLM.load(
            source, tokenizer=tokenizer, prompt_style=prompt_style, device=_device(device),
            dtype=DTYPES[dtype] if dtype is not None else None)
        self._batch_size = _batch_size(batch_size)
        self._max_length = int(max_length) if max_length is not None else self.llm.model.cfg.context_length
        if not 1 <= self._max_length <= self.llm.model.cfg.context_length:
            raise ConfigError(f"max_length={max_length} must lie in 1..{self.llm.model.cfg.context_length}, "
                              "the model's context length")
        self._max_gen_toks = int(max_gen_toks)

    # ------------------------------------------------------------------------------------------
    # What the harness asks of a model

    @property
    def eot_token_id(self) -> int:
        return self.llm.tokenizer.eot_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context conditions on: the tokenizer's BOS if it has one, else its end of text."""
        bos = getattr(self.llm.tokenizer, "bos_id", None)
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return self.llm.device

    @property
    def tokenizer_name(self) -> str:
        return self.llm.tokenizer.name

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """gptlab's tokenizers add no special tokens: the ids are the text's own."""
        return self.llm.tokenizer.encode(string)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.llm.tokenizer.decode(list(tokens))

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """``--apply_chat_template``: the conversation in the model's prompt format (``LLM.style``)."""
        return self.llm.style.render(chat_history, add_generation_prompt=add_generation_prompt)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.llm.style.chat_template if chat_template else None

    def get_model_info(self) -> dict[str, Any]:
        params = sum(p.numel() for p in self.llm.model.parameters())
        return {"model_source": self.llm.source, "model_num_parameters": params,
                "model_dtype": str(next(self.llm.model.parameters()).dtype), "prompt_style": self.llm.style.name}

    # ------------------------------------------------------------------------------------------
    # Scoring

    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests: Sequence[TokenRequest], disable_tqdm: bool = False,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        """``(sum of the continuation's log-probabilities, whether greedy decoding gives it)`` per request."""
        collator = Collator(requests, sort_fn=lambda req: (-len(req[1] + req[2]), tuple(req[1] + req[2])),
                            group_by="contexts", group_fn=lambda req: req[1] + req[2][:-1])
        results: list[tuple[float, bool]] = []
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood")
        for chunk in collator.get_batched(n=self.batch_size):
            # The last max_length + 1 tokens, less the last: the inputs that predict the continuation.
            inputs = [(context + continuation)[-(self.max_length + 1):][:-1] for _, context, continuation in chunk]
            width = max(len(ids) for ids in inputs)
            batch = torch.zeros(len(inputs), width, dtype=torch.long)  # right padding: causal attention ignores it
            for row, ids in enumerate(inputs):
                batch[row, :len(ids)] = torch.tensor(ids)
            logits = self.llm.model(batch.to(self.device))
            for (strings, context, continuation), ids, rows in zip(chunk, inputs, logits):
                # Only the positions that predict the continuation: (1, continuation, vocab).
                scored = F.log_softmax(rows[len(ids) - len(continuation):len(ids)].float(), dim=-1).unsqueeze(0)
                greedy = scored.argmax(dim=-1)
                for strings, continuation, scored in collator.get_cache(req_str=strings, cxt_toks=context,
                                                                      cont_toks=continuation, logits=scored):
                    target = torch.tensor(continuation, dtype=torch.long, device=self.device).unsqueeze(0)
                    is_greedy = bool((greedy[:, -target.shape[1]:] == target).all())
                    answer = (float(scored.gather(2, target.unsqueeze(-1)).sum()), is_greedy)
                    results.append(answer)
                    if strings is not None:
                        self.cache_hook.add_partial("loglikelihood", strings, answer)
                    bar.update(1)
        bar.close()
        return collator.get_original(results)

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each whole text, every token predicted once, in context-length windows."""
        windows: list[TokenRequest] = []
        counts = []
        for (text,) in (req.args for req in requests):
            pairs = [make_disjoint_window(pair) for pair in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            windows.extend((None, context, continuation) for context, continuation in pairs)
            counts.append(len(pairs))
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals, start = [], 0
        for req, count in zip(requests, counts):
            total = sum(score for score, _ in scores[start:start + count])
            start += count
            totals.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------------------------------
    # Generation

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Each context's continuation, batched by equal generation settings (longest contexts first)."""
        collator = Collator([req.args for req in requests], sort_fn=lambda args: (-len(self.tok_encode(args[0])), args[0]),
                            group_by="gen_kwargs", group_fn=lambda args: args[1])
        eos = self.tok_decode([self.eot_token_id])
        results: list[str] = []
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until")
        for chunk in collator.get_batched(n=self.batch_size):
            contexts, settings = zip(*chunk)
            kwargs = normalize_gen_kwargs(dict(settings[0]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            texts = self._generate(contexts, until, kwargs)
            for context, text in zip(contexts, texts):
                results.append(text)
                self.cache_hook.add_partial("generate_until", (context, settings[0]), text)
                bar.update(1)
        bar.close()
        return collator.get_original(results)

    def _generate(self, contexts: Sequence[str], until: list[str], kwargs: dict[str, Any]) -> list[str]:
        """One left-padded batch: each row's text before the first ``until`` string."""
        max_new = int(kwargs["max_gen_toks"])
        if max_new >= self.max_length:
            raise ConfigError(f"max_gen_toks={max_new} leaves no room for a context within the model's "
                              f"max_length={self.max_length}; ask for fewer (gptlab-eval harness --max-gen-toks N, "
                              "lm-eval --gen_kwargs max_gen_toks=N)")
        stops = self.llm.stop_ids
        prompts = [self.tok_encode(context)[-(self.max_length - max_new):] for context in contexts]
        ids, mask = left_pad([p or [self.prefix_token_id] for p in prompts], stops[0])
        # normalize_gen_kwargs set temperature 0 unless do_sample: greedy then.
        temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
        rows: list[list[int]] = [[] for _ in contexts]
        done = [False] * len(contexts)
        for step in stream_tokens(self.llm.model, ids.to(self.device), max_new,
                                  temperature=temperature, top_k=kwargs.get("top_k"), top_p=kwargs.get("top_p"),
                                  eos_id=stops, attention_mask=mask.to(self.device),
                                  vocab_limit=self.llm.tokenizer.vocab_size):
            for row, token in enumerate(step[:, 0].tolist()):
                if done[row]:
                    continue
                if token in stops:
                    done[row] = True
                    continue
                rows[row].append(token)
                done[row] = any(stop and stop in self.tok_decode(rows[row]) for stop in until)
            if all(done):
                break
        return [postprocess_generated_text(self.tok_decode(row), until, None) for row in rows]


def _device(device: str | None) -> str:
    """The device asked for; a CUDA device on a machine without one is ``auto``, as ``HFLM`` falls
    back (lm-eval's command line asks for ``cuda:0`` unless ``--device`` is given)."""
    if device is None or (device.startswith("cuda") and not torch.cuda.is_available()):
        return "auto"
    return device


def _batch_size(value: int | str) -> int:
    """``batch_size`` as the harness passes it (an int, or its text); ``auto`` is not measured here."""
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"batch_size={value!r} must be a positive integer (the gptlab backend does not "
                          "search for one: pass e.g. --batch_size 8)") from None
    if size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {size}")
    return size
