"""A model directory's own ``tokenizer.json``, checked against ``transformers``' ``AutoTokenizer``.

A tiny byte-level BPE is trained on "The Verdict" with the ``tokenizers`` library and saved as a
Hugging Face tokenizer directory, with a BOS-adding post-processor as Llama's has; nothing is
downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers
import tokenizers

from gptlab.data.pretrain import PretrainDataModule
from gptlab.errors import ConfigError
from gptlab.tokenizer import END_OF_TEXT, TextEncoding, get_tokenizer


SPECIALS = ["<s>", "</s>", END_OF_TEXT]


@pytest.fixture(scope="module")
def tokenizer_dir(verdict_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train([str(verdict_path)], trainer)
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    directory = tmp_path_factory.mktemp("tokenizer")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(directory)
    return directory


TEXTS = [
    "I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow enough.",
    "Naïve café: ünïcödé, emoji 🙂 and\ttabs\n\nnew lines  double  spaces",
    "",
]


def test_ids_round_trip_and_eos_match_transformers(tokenizer_dir: Path, verdict_path: Path):
    ours = get_tokenizer(str(tokenizer_dir))
    reference = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    assert ours.name == str(tokenizer_dir.resolve())
    assert ours.vocab_size == len(reference) == 500
    assert ours.eot_id == reference.eos_token_id == 1  # tokenizer_config.json's eos_token "</s>"

    for text in [*TEXTS, verdict_path.read_text(encoding="utf-8")]:
        ids = ours.encode(text)
        # No BOS: gptlab joins pieces itself, so encode is the text alone.
        assert ids == reference.encode(text, add_special_tokens=False)
        assert reference.encode(text)[1:] == ids
        assert ours.decode(ids) == reference.decode(ids) == text


def test_document_separator_becomes_the_eos_id(tokenizer_dir: Path):
    ours = get_tokenizer(str(tokenizer_dir / "tokenizer.json"))  # the file names its directory too
    first, second = ours.encode("the first"), ours.encode(" the second")
    assert ours.encode(f"the first{END_OF_TEXT} the second") == [*first, ours.eot_id, *second]


def test_eos_falls_back_to_generation_config_then_config(tokenizer_dir: Path, tmp_path: Path):
    copy = tmp_path / "tok"
    copy.mkdir()
    (copy / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
    (copy / "config.json").write_text(json.dumps({"eos_token_id": [0, 1]}))
    assert get_tokenizer(str(copy)).eot_id == 0
    (copy / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
    assert get_tokenizer(str(copy)).eot_id == 1
    (copy / "config.json").unlink()
    (copy / "generation_config.json").unlink()
    assert get_tokenizer(str(copy)).eot_id == 2  # the <|endoftext|> token itself


def test_data_modules_take_a_tokenizer_directory(tokenizer_dir: Path, verdict_path: Path):
    dm = PretrainDataModule(path=str(verdict_path), tokenizer=str(tokenizer_dir), max_length=32, batch_size=2)
    dm.prepare_data()
    dm.setup("fit")
    expected = get_tokenizer(str(tokenizer_dir)).encode(verdict_path.read_text(encoding="utf-8"))
    assert dm.num_tokens == len(expected)
    assert dm.train_dataset.tokens[:50].tolist() == expected[:50]
    encoding = TextEncoding(tokenizer=dm.tokenizer.name)
    assert encoding.pad_token_id == 1 and encoding.load_tokenizer() is dm.tokenizer


def test_bad_tokenizer_paths_are_one_line_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="unknown tokenizer .*or a directory with a tokenizer.json"):
        get_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read .*tokenizer.json"):
        get_tokenizer(str(tmp_path))


def test_generate_uses_the_model_directorys_own_tokenizer(tokenizer_dir: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture):
    import torch

    from gptlab import GPT, GPTConfig, generate
    from gptlab.checkpoints import export_hf
    from gptlab.cli.generate import main as generate_main

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("llama-micro", vocab_size=500, context_length=64)).eval()
    directory = export_hf(model, tmp_path / "model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_bytes((tokenizer_dir / name).read_bytes())

    assert generate_main([str(directory), "--prompt", "I HAD always thought", "--max-new-tokens", "8", "--no-eos"]) == 0
    tokenizer = get_tokenizer(str(tokenizer_dir))
    expected = generate(model, torch.tensor([tokenizer.encode("I HAD always thought")]), 8)
    assert capsys.readouterr().out == tokenizer.decode(expected[0].tolist()) + "\n"


def test_an_export_carries_its_tokenizer_and_a_run_generates_without_naming_it(tokenizer_dir: Path, tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture):
    import torch

    from gptlab import generate
    from gptlab.cli.generate import main as generate_main
    from gptlab.tasks import CausalLMTask

    # A source directory that names its end-of-text token only in its config.json, as some do.
    source = tmp_path / "source"
    source.mkdir()
    (source / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
    (source / "config.json").write_text(json.dumps({"eos_token_id": 1}))  # "</s>", not <|endoftext|> (2)
    tokenizer = get_tokenizer(str(source))
    assert tokenizer.eot_id == 1

    torch.manual_seed(0)
    task = CausalLMTask({"preset": "llama-micro", "vocab_size": 500, "context_length": 64, "n_layers": 2})
    export = task.export(tmp_path / "run" / "model", tokenizer=tokenizer)
    assert "emb_dim" in json.loads((export / "config.json").read_text())  # the model's config, not the source's
    carried = get_tokenizer(str(export))
    assert carried.eot_id == 1 and carried.encode(TEXTS[0]) == tokenizer.encode(TEXTS[0])

    # gptlab-generate on the run directory finds its export's tokenizer.json: no --tokenizer.
    assert generate_main([str(tmp_path / "run"), "--prompt", "I HAD always thought", "--max-new-tokens", "8",
                          "--no-eos"]) == 0
    expected = generate(task.gpt.eval(), torch.tensor([tokenizer.encode("I HAD always thought")]), 8)
    assert capsys.readouterr().out == tokenizer.decode(expected[0].tolist()) + "\n"


def test_the_run_summarys_generate_command_names_a_directory_tokenizer(tokenizer_dir: Path):
    from types import SimpleNamespace

    from gptlab.callbacks.summary import RunSummary

    data = SimpleNamespace(tokenizer=get_tokenizer(str(tokenizer_dir)), sample_prompt="Jack")
    command = RunSummary.generate_command(SimpleNamespace(callbacks=[], datamodule=data), "runs/x")
    assert command.endswith(f"--tokenizer {tokenizer_dir.resolve()}")
    data.tokenizer = get_tokenizer("gpt2")  # the default needs no flag: gptlab-generate picks it
    assert "--tokenizer" not in RunSummary.generate_command(SimpleNamespace(callbacks=[], datamodule=data), "runs/x")
