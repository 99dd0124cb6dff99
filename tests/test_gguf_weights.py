"""GGUF weights (``gptlab.checkpoints.gguf``), checked against references that are not gptlab's.

* The real SmolLM2-135M-Instruct GGUF (Q4_1, Q8_0 and F32 tensors) loads with the logits and the
  greedy tokens of ``transformers``' own GGUF loader, on several scripts and a chat; token ids
  come from ``transformers``' GGUF tokenizer, so these tests do not lean on gptlab's.
* The query/key rows a gptlab export stores are those of llama.cpp's converter formula, written
  out here; ``transformers`` loads small Llama and GPT-2 exports with the same logits.
* Round trips in every export type, the tokenizer fields, ``load_pretrained``'s routing, and bad
  files, each written here with gguf's own writer, refused in one line.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFValueType

from gptlab import GPT, GPTConfig, generate
from gptlab.checkpoints import export_gguf, load_gguf, load_pretrained
from gptlab.errors import CheckpointError
from gptlab.tokenizer.gguf_vocab import GGUFVocab

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smollm2_gguf_weights")]

#: Texts of several kinds and scripts, for the logit parity on the real model.
TEXTS = {
    "prose": "The old lighthouse keeper climbed the spiral stairs every evening, counting the steps aloud.",
    "python": "def fibonacci(n: int) -> list[int]:\n    seq = [0, 1]\n    while len(seq) < n:\n"
              "        seq.append(seq[-1] + seq[-2])\n    return seq[:n]\n",
    "whitespace": "\n\n\n        \t\t\t    \n  \n",
    "chinese": "北京是中国的首都，也是一座历史悠久的文化名城。",
    "russian": "Москва — столица России и крупнейший город страны.",
    "arabic": "القاهرة هي عاصمة مصر وأكبر مدنها.",
    "chatml": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nName three primary "
              "colours.<|im_end|>\n<|im_start|>assistant\nRed, blue and yellow.<|im_end|>\n<|im_start|>user\n"
              "And the secondary ones?<|im_end|>\n<|im_start|>assistant\n",
}
CAPITAL_PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
IM_END = 2
VOCAB = 96
LLAMA = GPTConfig(vocab_size=VOCAB, context_length=64, emb_dim=64, n_heads=4, n_kv_heads=2, n_layers=2,
                  hidden_dim=256, norm="rmsnorm", mlp="swiglu", pos_emb="rope", rope_base=10000.0, qkv_bias=False,
                  out_bias=False, mlp_bias=False, drop_rate=0.0, name="tiny-llama")
GPT2 = GPTConfig(vocab_size=VOCAB, context_length=1024, emb_dim=64, n_heads=4, n_layers=2, qkv_bias=True,
                 drop_rate=0.0, name="tiny-gpt2")
#: Llama 3's scaling with a short original context, so that heads of 16 (8 frequencies) have all three
#: regions: kept, blended (two of them, the fewest that fix the settings) and slowed down.
LLAMA3_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 8.0, "original_context_length": 128}


# --- helpers -------------------------------------------------------------------------------------


def tiny(config: GPTConfig, seed: int = 0, **overrides: Any) -> GPT:
    """A random GPT whose norm scales and biases are not the defaults, so a swapped one would show."""
    torch.manual_seed(seed)
    model = GPT(dataclasses.replace(config, **overrides))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith((".scale", ".shift", ".bias")):
                param.uniform_(0.5, 1.5) if name.endswith(".scale") else param.uniform_(-0.2, 0.2)
    return model.eval()


def random_ids(length: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(seed))


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return getattr(out, "logits", out)


def encode(tokenizer: Any, text: str) -> torch.Tensor:
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def hf_gguf_model(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def llama_cpp_permute(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's ``convert_hf_to_gguf.py`` ``LlamaModel.permute``, as that script writes it."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def llama_cpp_rope_factors(head_dim: int, base: float, scaling: dict[str, float]) -> list[float]:
    """llama.cpp's converter's ``rope_freqs`` of Llama 3's scaling, as that script computes them."""
    low_wavelen = scaling["original_context_length"] / scaling["low_freq_factor"]
    high_wavelen = scaling["original_context_length"] / scaling["high_freq_factor"]
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (i / head_dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(scaling["factor"])
        else:
            smooth = ((scaling["original_context_length"] / wavelen - scaling["low_freq_factor"])
                      / (scaling["high_freq_factor"] - scaling["low_freq_factor"]))
            factors.append(1 / ((1 - smooth) / scaling["factor"] + smooth))
    return factors


def file_tensors(path: Path) -> dict[str, Any]:
    """Every tensor of a GGUF file by name, as gguf's reader sees it."""
    return {tensor.name: tensor for tensor in gguf.GGUFReader(path).tensors}


def rewrite(source: Path, target: Path, metadata: dict[str, Any] | None = None,
            tensors: dict[str, tuple[np.ndarray, GGMLQuantizationType] | None] | None = None) -> Path:
    """A copy of GGUF ``source`` written with gguf's writer: metadata values set, tensors replaced,
    added, or dropped (``None``)."""
    metadata, tensors = dict(metadata or {}), dict(tensors or {})
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(target, metadata.pop("general.architecture", None)
                             or reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(name, metadata.pop(name, field.contents()), field.types[0], sub_type=sub_type)
    for name, value in metadata.items():
        writer.add_key_value(name, value, GGUFValueType.get_type(value))
    for tensor in reader.tensors:
        replacement = tensors.pop(tensor.name, (np.array(tensor.data), tensor.tensor_type))
        if replacement is not None:
            writer.add_tensor(tensor.name, replacement[0], raw_dtype=replacement[1])
    for name, (data, qtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def one_line_error(call: Any, *args: Any, **kwargs: Any) -> str:
    """The message of the ``CheckpointError`` that ``call`` raises, checked to be one line."""
    with pytest.raises(CheckpointError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def vocab_of(path: Path) -> GGUFVocab:
    """The ``tokenizer.ggml.*`` fields of a GGUF file as a ``GGUFVocab``, read here with gguf's reader."""
    fields = gguf.GGUFReader(path).fields

    def value(key: str) -> Any:
        return fields[key].contents() if key in fields else None

    return GGUFVocab(
        model=value("tokenizer.ggml.model"), pre=value("tokenizer.ggml.pre"), tokens=value("tokenizer.ggml.tokens"),
        token_types=value("tokenizer.ggml.token_type"), merges=value("tokenizer.ggml.merges"),
        eos_id=value("tokenizer.ggml.eos_token_id"), bos_id=value("tokenizer.ggml.bos_token_id"),
        pad_id=value("tokenizer.ggml.padding_token_id"), unknown_id=value("tokenizer.ggml.unknown_token_id"),
        add_bos=bool(value("tokenizer.ggml.add_bos_token")), chat_template=value("tokenizer.chat_template"),
    )


# --- the real SmolLM2 GGUF against transformers' loader ------------------------------------------


@pytest.fixture(scope="module")
def hf_smollm2(smollm2_gguf: Path) -> torch.nn.Module:
    """``transformers``' own import of the real file (about 15 s), once for the module."""
    return hf_gguf_model(smollm2_gguf)


@pytest.fixture(scope="module")
def hf_tokenizer(smollm2_gguf: Path) -> Any:
    return AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf: Path) -> GPT:
    return load_gguf(smollm2_gguf).eval()


def test_the_real_config_comes_from_the_metadata(smollm2: GPT) -> None:
    cfg = smollm2.cfg
    assert (cfg.n_layers, cfg.emb_dim, cfg.n_heads, cfg.kv_heads, cfg.ff_hidden_dim, cfg.vocab_size) == (
        30, 576, 9, 3, 1536, 49152)
    assert (cfg.norm, cfg.mlp, cfg.pos_emb, cfg.rope_base, cfg.norm_eps, cfg.context_length) == (
        "rmsnorm", "swiglu", "rope", 100000.0, 1e-5, 8192)
    assert cfg.tie_embeddings and smollm2.out_head.weight is smollm2.tok_emb.weight
    assert not (cfg.qkv_bias or cfg.out_bias or cfg.mlp_bias) and cfg.drop_rate == 0.0 and cfg.rope_scaling is None
    assert all(p.dtype == torch.float32 for p in smollm2.parameters())


@pytest.mark.parametrize("kind", list(TEXTS))
def test_real_logits_match_transformers(kind: str, smollm2: GPT, hf_smollm2: torch.nn.Module,
                                        hf_tokenizer: Any) -> None:
    ids = encode(hf_tokenizer, TEXTS[kind])
    expected = logits(hf_smollm2, ids)
    assert ids.shape[1] >= 3 and expected.abs().max() > 10.0
    assert (logits(smollm2, ids) - expected).abs().max().item() <= 1e-4


def test_real_greedy_chat_matches_transformers_and_names_paris(smollm2: GPT, hf_smollm2: torch.nn.Module,
                                                              hf_tokenizer: Any) -> None:
    prompt = encode(hf_tokenizer, CAPITAL_PROMPT)
    with torch.no_grad():
        expected = hf_smollm2.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                       max_new_tokens=50, min_new_tokens=50, eos_token_id=None, pad_token_id=IM_END)
    ours = generate(smollm2, prompt, max_new_tokens=50)
    assert expected.shape[1] == prompt.shape[1] + 50
    assert ours.tolist() == expected.tolist()
    answer = ours[0, prompt.shape[1]:].tolist()
    answer = answer[: answer.index(IM_END)] if IM_END in answer else answer
    assert "Paris" in hf_tokenizer.decode(answer)


def test_real_f32_export_loads_in_transformers_with_its_tokenizer(
        smollm2: GPT, smollm2_gguf: Path, hf_smollm2: torch.nn.Module, hf_tokenizer: Any,
        tmp_path: Path) -> None:
    """Real GGUF -> gptlab -> GGUF f32 -> transformers: the original's logits, and its tokenizer."""
    path = export_gguf(smollm2, tmp_path / "smollm2-f32.gguf", vocab=vocab_of(smollm2_gguf))
    exported = hf_gguf_model(path)
    for text in (TEXTS["prose"], TEXTS["chatml"]):
        ids = encode(hf_tokenizer, text)
        assert (logits(exported, ids) - logits(hf_smollm2, ids)).abs().max().item() <= 1e-4
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in TEXTS.values():
        assert tokenizer(text)["input_ids"] == hf_tokenizer(text)["input_ids"]
    assert tokenizer.eos_token == hf_tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.chat_template == hf_tokenizer.chat_template


def test_real_q8_0_export_agrees_with_the_float32_model(smollm2: GPT, verdict_path: Path, hf_tokenizer: Any,
                                                       tmp_path: Path) -> None:
    """Teacher-forced next-token argmax over 200 tokens of the-verdict.txt: q8_0 against float32."""
    path = export_gguf(smollm2, tmp_path / "smollm2-q8_0.gguf", dtype="q8_0")
    stored = file_tensors(path)
    assert stored["token_embd.weight"].tensor_type == GGMLQuantizationType.Q8_0
    assert stored["blk.0.attn_q.weight"].tensor_type == GGMLQuantizationType.Q8_0
    assert stored["blk.0.attn_norm.weight"].tensor_type == GGMLQuantizationType.F32
    quantised = load_gguf(path).eval()
    ids = encode(hf_tokenizer, verdict_path.read_text(encoding="utf-8"))[:, :200]
    assert ids.shape[1] == 200
    agreement = (logits(quantised, ids).argmax(-1) == logits(smollm2, ids).argmax(-1)).float().mean().item()
    assert agreement >= 0.95


#: Run in a process of its own, so the peak is this load's alone (``VmHWM``: ``ru_maxrss`` would
#: carry over the forking parent's): the resident memory the load adds, in units of the weights' bytes.
PEAK_PROBE = """
import sys
from gptlab.checkpoints.gguf import load_gguf

def status_kib(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

before = status_kib("VmRSS")
model = load_gguf(sys.argv[1])
added = (status_kib("VmHWM") - before) * 1024
print(added / sum(p.numel() * p.element_size() for p in model.parameters()))
"""


def test_loading_never_holds_the_weights_twice(smollm2_gguf: Path) -> None:
    """The peak resident memory that loading the real file adds stays below twice its weights.

    ``load_gguf`` builds the model, then dequantises one tensor at a time into it: the peak is
    the weights once, the reader's metadata and mapped pages, and one tensor in flight (about
    1.6 x the 513 MB of weights). A loader that dequantised the whole file into a state dict before
    copying it into the model would hold the weights twice, plus the same overheads: above 2 x.
    """
    result = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(smollm2_gguf)], capture_output=True, text=True,
                            check=True)
    assert float(result.stdout.strip().splitlines()[-1]) < 2.0


def test_a_truncated_real_file_is_one_line(smollm2_gguf: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as f:
        cut.write_bytes(f.read(1 << 20))
    assert "truncated" in one_line_error(load_gguf, cut)


# --- llama.cpp's layout, on small models written here --------------------------------------------


def test_query_and_key_rows_are_stored_as_llama_cpps_converter_permutes_them(tmp_path: Path) -> None:
    model = tiny(LLAMA, qkv_bias=True)
    stored = file_tensors(export_gguf(model, tmp_path / "llama.gguf"))
    att, cfg = model.trf_blocks[1].att, model.cfg
    for name, ours, heads in (("attn_q", att.W_query, cfg.n_heads), ("attn_k", att.W_key, cfg.kv_heads)):
        for suffix in ("weight", "bias"):
            expected = llama_cpp_permute(getattr(ours, suffix).detach(), heads)
            assert not torch.equal(expected, getattr(ours, suffix))  # the permutation moves rows
            assert torch.equal(torch.from_numpy(np.array(stored[f"blk.1.{name}.{suffix}"].data)), expected)
    assert torch.equal(torch.from_numpy(np.array(stored["blk.1.attn_v.weight"].data)), att.W_value.weight)


@pytest.mark.parametrize("config", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_transformers_loads_small_exports_with_the_same_logits(config: GPTConfig, tmp_path: Path) -> None:
    """``transformers`` undoes llama.cpp's permutation itself and reads GPT-2's fused ``attn_qkv``."""
    model = tiny(config, tie_embeddings=False)
    # transformers takes a GPT-2 GGUF's vocabulary size from its token list (padded to the model's).
    vocab = GGUFVocab(model="gpt2", pre="gpt-2", tokens=["a", "b", "ab", "<|endoftext|>"], token_types=[1, 1, 1, 3],
                      merges=["a b"], eos_id=3)
    path = export_gguf(model, tmp_path / f"{config.name}.gguf", vocab=vocab)
    ids = random_ids()
    assert (logits(hf_gguf_model(path), ids) - logits(model, ids)).abs().max().item() < 1e-5


@pytest.mark.parametrize("config", [LLAMA, GPT2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_f32_round_trip_is_exact(config: GPTConfig, tied: bool, tmp_path: Path) -> None:
    model = tiny(config, tie_embeddings=tied)
    path = export_gguf(model, tmp_path / "model.gguf")
    assert ("output.weight" in file_tensors(path)) is not tied
    loaded = load_gguf(path).eval()
    assert loaded.cfg.written_out() == model.cfg.written_out() and loaded.cfg.name == config.name
    assert (loaded.out_head.weight is loaded.tok_emb.weight) is tied
    assert model.state_dict().keys() == loaded.state_dict().keys()
    assert all(torch.equal(tensor, loaded.state_dict()[name]) for name, tensor in model.state_dict().items())
    assert torch.equal(logits(loaded, random_ids()), logits(model, random_ids()))


def test_a_gpt2_shaped_model_without_biases_round_trips_with_zero_biases(tmp_path: Path) -> None:
    """llama.cpp's GPT-2 requires every bias; zeros compute the same function."""
    model = tiny(GPT2, qkv_bias=False, out_bias=False, mlp_bias=False)
    loaded = load_gguf(export_gguf(model, tmp_path / "gpt2.gguf")).eval()
    assert loaded.cfg.qkv_bias and loaded.cfg.out_bias and loaded.cfg.mlp_bias
    assert not loaded.trf_blocks[0].att.W_query.bias.any()
    assert torch.equal(logits(loaded, random_ids()), logits(model, random_ids()))


@pytest.mark.parametrize("dtype, tolerance", [("f16", 5e-3), ("bf16", 3e-2), ("q8_0", 5e-2)])
def test_every_export_type_loads(dtype: str, tolerance: float, tmp_path: Path) -> None:
    # emb_dim 48: rows of 48 are not whole q8_0 blocks of 32, so those matrices fall back to f16.
    for config in (LLAMA, dataclasses.replace(LLAMA, emb_dim=48, n_heads=2, n_kv_heads=1, hidden_dim=96)):
        model = tiny(config)
        path = export_gguf(model, tmp_path / f"{dtype}-{config.emb_dim}.gguf", dtype=dtype)
        stored = file_tensors(path)
        matrix = stored["blk.0.attn_q.weight"].tensor_type.name.lower()
        assert matrix == ("f16" if dtype == "q8_0" and config.emb_dim % 32 else dtype)
        assert stored["blk.0.attn_norm.weight"].tensor_type == GGMLQuantizationType.F32
        assert stored["output_norm.weight"].tensor_type == GGMLQuantizationType.F32
        loaded = load_gguf(path).eval()
        assert all(p.dtype == torch.float32 for p in loaded.parameters())
        expected = logits(model, random_ids())
        assert (logits(loaded, random_ids()) - expected).abs().max().item() < tolerance * expected.abs().max().item()


def test_load_gguf_converts_to_the_dtype_asked_for(tmp_path: Path) -> None:
    model = tiny(LLAMA)
    loaded = load_gguf(export_gguf(model, tmp_path / "model.gguf"), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert torch.equal(loaded.tok_emb.weight, model.tok_emb.weight.to(torch.bfloat16))


def test_llama3_rope_scaling_round_trips_through_rope_freqs(tmp_path: Path) -> None:
    model = tiny(LLAMA, rope_scaling=LLAMA3_SCALING)
    path = export_gguf(model, tmp_path / "scaled.gguf")
    factors = torch.from_numpy(np.array(file_tensors(path)["rope_freqs.weight"].data))
    expected = torch.tensor(llama_cpp_rope_factors(LLAMA.head_dim, LLAMA.rope_base, LLAMA3_SCALING))
    assert torch.allclose(factors, expected, rtol=1e-6) and len(set(factors.tolist())) > 3  # all three regions
    loaded = load_gguf(path).eval()
    assert loaded.cfg.rope_scaling == LLAMA3_SCALING
    assert torch.equal(logits(loaded, random_ids(60)), logits(model, random_ids(60)))


def test_llama3_settings_of_another_scale_load_as_the_same_frequencies(tmp_path: Path) -> None:
    """Only the ratios of the three context settings reach the frequencies: low_freq_factor 1 is picked."""
    doubled = {"factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 16.0, "original_context_length": 256}
    model = tiny(LLAMA, rope_scaling=doubled)
    loaded = load_gguf(export_gguf(model, tmp_path / "scaled.gguf")).eval()
    assert loaded.cfg.rope_scaling == LLAMA3_SCALING
    assert torch.allclose(loaded.rope.cos, model.rope.cos, atol=1e-6)
    assert torch.allclose(logits(loaded, random_ids(60)), logits(model, random_ids(60)), atol=1e-5)


# --- the tokenizer fields ------------------------------------------------------------------------


def test_the_vocabulary_is_written_as_llama_cpp_reads_it(tmp_path: Path) -> None:
    vocab = GGUFVocab(model="gpt2", pre="smollm", tokens=["<|endoftext|>", "a", "b", "ab", "<|im_end|>"],
                      token_types=[3, 1, 1, 1, 3], merges=["a b"], eos_id=0, bos_id=0, pad_id=4, unknown_id=0,
                      add_bos=False, chat_template="{{ messages }}", extra_stop_ids=(4,))
    fields = gguf.GGUFReader(export_gguf(tiny(LLAMA), tmp_path / "vocab.gguf", vocab=vocab)).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == VOCAB and tokens[:5] == vocab.tokens and tokens[5] == "[PAD5]"
    assert fields["tokenizer.ggml.token_type"].contents() == [3, 1, 1, 1, 3] + [5] * (VOCAB - 5)
    expected = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.merges": ["a b"],
                "tokenizer.ggml.eos_token_id": 0, "tokenizer.ggml.bos_token_id": 0,
                "tokenizer.ggml.padding_token_id": 4, "tokenizer.ggml.unknown_token_id": 0,
                "tokenizer.ggml.add_bos_token": False, "tokenizer.chat_template": "{{ messages }}",
                "tokenizer.ggml.eot_token_id": 4, "general.architecture": "llama", "general.name": "tiny-llama",
                "general.file_type": 0, "llama.context_length": 64, "llama.block_count": 2,
                "llama.attention.head_count_kv": 2, "llama.rope.freq_base": 10000.0, "llama.vocab_size": VOCAB}
    assert {key: fields[key].contents() for key in expected} == expected


def test_a_vocabulary_larger_than_the_model_is_refused(tmp_path: Path) -> None:
    vocab = GGUFVocab(model="gpt2", pre="gpt-2", tokens=[f"t{i}" for i in range(VOCAB + 1)],
                      token_types=[1] * (VOCAB + 1), merges=[], eos_id=0)
    assert "97 tokens" in one_line_error(export_gguf, tiny(LLAMA), tmp_path / "big.gguf", vocab=vocab)
    assert not (tmp_path / "big.gguf").exists()


# --- load_pretrained --------------------------------------------------------------------------------


def test_load_pretrained_reads_gguf_by_suffix_by_magic_and_by_name(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny(LLAMA)
    path = export_gguf(model, tmp_path / "model.gguf")
    by_magic = tmp_path / "model.bin"
    by_magic.write_bytes(path.read_bytes())
    monkeypatch.setattr("gptlab.checkpoints.load.resolve_named_model", lambda name: path)
    for source in (path, by_magic):
        assert torch.equal(load_pretrained(source).tok_emb.weight, model.tok_emb.weight)
    named = load_pretrained("smollm2-135m-instruct")
    assert named.cfg.name == "smollm2-135m-instruct" and torch.equal(named.tok_emb.weight, model.tok_emb.weight)
    assert "smollm2-135m-instruct" in one_line_error(load_pretrained, "no-such-model")


def test_load_pretrained_merges_a_training_config(tmp_path: Path) -> None:
    """As ``task.init=model.gguf`` does: the file's architecture, the caller's dropout, context and head."""
    path = export_gguf(tiny(GPT2, tie_embeddings=True), tmp_path / "gpt2.gguf")
    caller = dataclasses.replace(GPT2, context_length=256, drop_rate=0.1, tie_embeddings=False, name="mine")
    model = load_pretrained(path, caller)
    assert (model.cfg.context_length, model.cfg.drop_rate, model.cfg.name) == (256, 0.1, "mine")
    assert model.pos_emb.weight.shape[0] == 256 and model.training
    assert model.out_head.weight is not model.tok_emb.weight
    assert torch.equal(model.out_head.weight, model.tok_emb.weight)
    wrong = dataclasses.replace(GPT2, emb_dim=128)
    assert "emb_dim" in one_line_error(load_pretrained, path, wrong)


# --- export refusals and atomicity ---------------------------------------------------------------


def test_export_refuses_other_architectures_and_types(tmp_path: Path) -> None:
    qwen3 = tiny(LLAMA, qk_norm=True)
    assert "qk_norm=True" in one_line_error(export_gguf, qwen3, tmp_path / "qwen3.gguf")
    assert "'q4_k'" in one_line_error(export_gguf, tiny(LLAMA), tmp_path / "q4.gguf", dtype="q4_k")
    assert not list(tmp_path.iterdir())


def test_a_failed_export_leaves_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = export_gguf(tiny(LLAMA, seed=1), tmp_path / "model.gguf")
    before = target.read_bytes()
    real_quantize, calls = gguf.quants.quantize, []

    def failing_quantize(data: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
        calls.append(qtype)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_quantize(data, qtype)

    monkeypatch.setattr(gguf.quants, "quantize", failing_quantize)
    assert "No space left" in one_line_error(export_gguf, tiny(LLAMA, seed=2), target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


# --- bad files -----------------------------------------------------------------------------------


@pytest.fixture
def llama_file(tmp_path: Path) -> Path:
    return export_gguf(tiny(LLAMA), tmp_path / "llama.gguf")


def test_a_file_that_is_not_gguf_is_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a model\n")
    assert "not a GGUF file" in one_line_error(load_gguf, fake)
    assert "not a GGUF file" in one_line_error(load_pretrained, fake)
    (tmp_path / "empty.gguf").touch()
    assert "not a GGUF file" in one_line_error(load_gguf, tmp_path / "empty.gguf")
    assert "does not exist" in one_line_error(load_gguf, tmp_path / "missing.gguf")


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_truncated_file_is_one_line(keep: float, llama_file: Path) -> None:
    data = llama_file.read_bytes()
    llama_file.write_bytes(data[: int(len(data) * keep)])
    assert "truncated" in one_line_error(load_gguf, llama_file)


def test_an_unsupported_architecture_is_one_line(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(tmp_path / "mamba.gguf", "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((VOCAB, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    message = one_line_error(load_gguf, tmp_path / "mamba.gguf")
    assert "'mamba'" in message and "llama" in message and "gpt2" in message


@pytest.mark.parametrize("qtype", [GGMLQuantizationType.Q8_K, GGMLQuantizationType.I8])
def test_a_type_gguf_cannot_dequantise_is_one_line(qtype: GGMLQuantizationType, llama_file: Path,
                                                    tmp_path: Path) -> None:
    shape = (LLAMA.emb_dim, LLAMA.ff_hidden_dim)  # ffn_down: rows of 256, one Q8_K block
    data = (np.zeros(gguf.quants.quant_shape_to_byte_shape(shape, qtype), dtype=np.uint8)
            if qtype == GGMLQuantizationType.Q8_K else np.zeros(shape, dtype=np.int8))
    bad = rewrite(llama_file, tmp_path / "bad.gguf", tensors={"blk.1.ffn_down.weight": (data, qtype)})
    message = one_line_error(load_gguf, bad)
    assert qtype.name in message and "blk.1.ffn_down.weight" in message


def test_shapes_that_do_not_match_the_metadata_are_one_line(llama_file: Path, tmp_path: Path) -> None:
    bad = rewrite(llama_file, tmp_path / "bad.gguf", metadata={"llama.feed_forward_length": 128})
    message = one_line_error(load_gguf, bad)
    assert "blk.0.ffn_gate.weight has shape [256, 64]" in message and "[128, 64]" in message


@pytest.mark.parametrize("change, words", [
    ({"tensors": {"blk.1.ffn_up.weight": None}}, "lacks tensor 'blk.1.ffn_up.weight'"),
    ({"tensors": {"blk.0.ffn_up_exps.weight": (np.zeros((2, 2), np.float32), GGMLQuantizationType.F32)}},
     "unexpected tensors"),
    ({"metadata": {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0}}, "RoPE scaling 'yarn'"),
    ({"metadata": {"llama.expert_count": 8}}, "mixture of 8 experts"),
    ({"metadata": {"llama.rope.dimension_count": 8}}, "partial rotary"),
    ({"tensors": {"rope_freqs.weight": (np.linspace(1, 3, 8, dtype=np.float32), GGMLQuantizationType.F32)}},
     "not Llama 3's RoPE frequency scaling"),
], ids=["missing", "unexpected", "yarn", "experts", "partial-rotary", "rope-freqs"])
def test_files_gptlab_cannot_run_are_one_line(change: dict[str, Any], words: str, llama_file: Path,
                                              tmp_path: Path) -> None:
    bad = rewrite(llama_file, tmp_path / "bad.gguf", **change)
    assert words in one_line_error(load_gguf, bad)
