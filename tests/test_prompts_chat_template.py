"""``prompt_style=chat_template``: instruction and preference records in the tokenizer's own chat
template (the real SmolLM2's ChatML), checked against the template rendered on its own and against
``transformers``' ``apply_chat_template`` token ids; exact masks, the end token, prompt.json, errors."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gptlab.callbacks.prompt_style import RecordPromptStyle
from gptlab.checkpoints import save_model
from gptlab.data import PreferenceDataModule
from gptlab.data.instruction import IGNORE_INDEX, InstructionDataModule, encode_record
from gptlab.errors import ConfigError
from gptlab.inference import LLM
from gptlab.model import GPT, GPTConfig
from gptlab.prompts import ALPACA, CHAT_TEMPLATE, CHATML, PROMPT_STYLES, PromptStyle, resolve_style, style_from_record
from gptlab.runs import RunFiles
from gptlab.tokenizer import GGUFTokenizer, get_tokenizer

IM_END = "<|im_end|>"


@pytest.fixture(scope="module")
def records(shared_data: Path) -> list[dict]:
    return [{**r, "input": r.get("input") or ""} for r in json.loads((shared_data / "instruction-data.json").read_text())]


@pytest.fixture(scope="module")
def records_file(tmp_path_factory: pytest.TempPathFactory, records: list[dict]) -> Path:
    """The first 40 real records (34 / 4 / 2 in the book's split), one with an input in each split."""
    path = tmp_path_factory.mktemp("records") / "records.json"
    path.write_text(json.dumps(records[:40]))
    return path


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory, smollm2: GGUFTokenizer) -> Path:
    """SmolLM2's tokenizer as a Hugging Face directory, its chat template in tokenizer_config.json."""
    directory = tmp_path_factory.mktemp("smollm2-tokenizer")
    smollm2.save(directory)
    return directory


def tiny_export(directory: Path, tokenizer_dir: Path) -> Path:
    """A random nano GPT over SmolLM2's vocabulary, exported with that tokenizer (and no prompt.json)."""
    torch.manual_seed(0)
    tokenizer = get_tokenizer(str(tokenizer_dir))
    save_model(GPT(GPTConfig.from_dict({"preset": "nano", "vocab_size": tokenizer.vocab_size, "context_length": 256})),
               directory)
    tokenizer.save(directory)
    return directory


def user_text(record: dict) -> str:
    return record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")


def conversation(record: dict, reply: str | None = None) -> list[dict]:
    user = [{"role": "user", "content": user_text(record)}]
    return user if reply is None else [*user, {"role": "assistant", "content": reply}]


def test_records_render_as_the_tokenizers_own_template_in_exact_token_ids(smollm2: GGUFTokenizer,
                                                                          records: list[dict]):
    style = resolve_style(CHAT_TEMPLATE, smollm2)
    assert style == PromptStyle.from_chat_template(CHAT_TEMPLATE, smollm2.chat_template.source, "<|im_start|>", IM_END)
    assert style.stop == style.end_of_turn == IM_END and style.end_id(smollm2) == smollm2.encode(IM_END)[0] == 2
    template = smollm2.chat_template  # the reference: the template rendered by itself
    for record in records:  # all 1,100: prompt and response tokenized apart equal the whole rendering's ids
        prompt, response = style.prompt_and_response(record)
        assert prompt == template.render(conversation(record), add_generation_prompt=True)
        full = template.render(conversation(record, record["output"]), add_generation_prompt=False)
        assert full == prompt + response + IM_END + "\n"
        example = encode_record(record, style, smollm2)
        assert example.ids[:example.prompt_length] == smollm2.encode(prompt)
        assert smollm2.encode(full) == example.ids + [style.end_id(smollm2)] + smollm2.encode("\n")


def test_ids_and_masks_equal_transformers_apply_chat_template(hf_dir: Path, records_file: Path, smollm2_gguf: Path):
    import transformers

    reference = transformers.AutoTokenizer.from_pretrained(hf_dir)
    newline = reference.encode("\n", add_special_tokens=False)

    def ids(messages: list[dict], generation_prompt: bool) -> list[int]:
        return reference.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                             return_dict=True)["input_ids"]

    for tokenizer in (str(hf_dir), str(smollm2_gguf)):  # a Hugging Face directory and the GGUF alike
        data = InstructionDataModule(path=str(records_file), tokenizer=tokenizer, prompt_style=CHAT_TEMPLATE,
                                     mask_prompt=True, batch_size=4)
        data.setup()
        assert data.prompt_style == CHAT_TEMPLATE and data.end_id == reference.convert_tokens_to_ids(IM_END)
        dataset = data.datasets["train"]
        inputs, targets = data.collate_fn()(dataset.examples)
        for row, (record, example) in enumerate(zip(dataset.records, dataset.examples)):
            prompt = ids(conversation(record), True)
            full = ids(conversation(record, record["output"]), False)
            n = len(example.ids)
            assert example.prompt_length == len(prompt) and example.ids[:len(prompt)] == prompt
            assert inputs[row, :n].tolist() + [data.end_id] + newline == full
            # Target i is token i + 1: the prompt's tokens are ignored, the response and <|im_end|> are not.
            assert targets[row, :len(prompt) - 1].tolist() == [IGNORE_INDEX] * (len(prompt) - 1)
            assert targets[row, len(prompt) - 1:n].tolist() == full[len(prompt):n + 1]
            assert reference.decode(targets[row, len(prompt) - 1:n]) == record["output"] + IM_END
            assert (targets[row, n:] == IGNORE_INDEX).all()


@pytest.mark.parametrize("style", ["chat_template", "alpaca"])
def test_mask_prompt_is_one_override_on_the_smollm2_tokenizer(style: str, records_file: Path):
    from helpers.runs import compose_train
    from hydra.utils import instantiate

    cfg = compose_train("experiment=instruct_scratch", f"data.path={records_file}", "output_dir=/tmp/run",
                        "data.tokenizer=smollm2-135m-instruct", f"data.prompt_style={style}", "data.mask_prompt=true",
                        "model.context_length=256")
    data = instantiate(cfg.data)
    data.setup()
    tokenizer, chosen = data.tokenizer, data.style
    assert data.mask_prompt and chosen.name == style and data.end_id == 2  # SmolLM2's EOS is <|im_end|>
    inputs, targets = next(iter(data.val_dataloader()))
    for row, record in enumerate(data.datasets["val"].records):
        prompt, response = chosen.prompt_and_response(record)
        kept = targets[row][targets[row] != IGNORE_INDEX].tolist()
        assert kept == tokenizer.encode(response) + [2]
        assert tokenizer.decode(inputs[row, :len(tokenizer.encode(prompt))].tolist()) == prompt


def test_the_run_records_the_resolved_template_and_inference_reads_it_back(smollm2: GGUFTokenizer, hf_dir: Path,
                                                                         records_file: Path, tmp_path: Path):
    data = InstructionDataModule(path=str(records_file), tokenizer=str(hf_dir), prompt_style=CHAT_TEMPLATE)
    run = tmp_path / "run"
    export = tiny_export(run / "model", hf_dir)
    callback = RecordPromptStyle(str(run), str(export))
    trainer = SimpleNamespace(datamodule=data)
    callback.on_fit_start(trainer, None)
    callback.on_fit_end(trainer, None)
    for directory in (run, export):
        record = json.loads((directory / "prompt.json").read_text())
        assert record["prompt_style"] == CHAT_TEMPLATE and record["chat_template"] == smollm2.chat_template.source
        assert record["stop"] == IM_END and record["eos_token"] == IM_END and style_from_record(record) == data.style
    llm = LLM.load(export, device="cpu")
    assert RunFiles.find(export).prompt_record() is not None and llm.style == data.style
    assert data.end_id in llm.stop_ids  # generation stops at the token the responses were trained to end with
    record = data.load_splits()["val"][0]
    assert llm.style.prompt(record) == smollm2.chat_template.render(conversation(record))
    # Asked for by name, the tokenizer's own template wins over the style the run recorded.
    (export / "prompt.json").write_text(json.dumps(ALPACA.to_record()))
    assert LLM.load(export, device="cpu").style == ALPACA
    assert LLM.load(export, device="cpu", prompt_style=CHAT_TEMPLATE).style == data.style


def test_a_template_that_is_a_registered_style_is_that_style(hf_dir: Path, tmp_path: Path):
    directory = tmp_path / "chatml"
    directory.mkdir()
    (directory / "tokenizer.json").write_bytes((hf_dir / "tokenizer.json").read_bytes())
    settings = {**json.loads((hf_dir / "tokenizer_config.json").read_text()), "chat_template": CHATML.chat_template}
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    assert resolve_style(CHAT_TEMPLATE, get_tokenizer(str(directory))) is CHATML


def test_a_tokenizer_without_a_chat_template_is_one_clear_line(shared_data: Path):
    registered = ", ".join(PROMPT_STYLES)
    for build in (lambda: InstructionDataModule(tokenizer="gpt2", prompt_style=CHAT_TEMPLATE),
                  lambda: PreferenceDataModule(tokenizer="byte", prompt_style=CHAT_TEMPLATE)):
        with pytest.raises(ConfigError) as err:
            build()
        message = str(err.value)
        assert "\n" not in message and "has none" in message and registered in message
        assert "'gpt2'" in message or "'byte'" in message


def test_preference_responses_are_the_templates_replies_ending_with_its_end_token(smollm2: GGUFTokenizer,
                                                                                  shared_data: Path, tmp_path: Path):
    pairs = json.loads((shared_data / "instruction-data-with-preference.json").read_text())[:40]
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(pairs))
    data = PreferenceDataModule(path=str(path), tokenizer=smollm2.name, prompt_style=CHAT_TEMPLATE, shuffle=False)
    data.setup()
    assert data.end_id == 2 and data.style.name == CHAT_TEMPLATE
    kept = [{**r, "input": r.get("input") or ""} for r in pairs[:34] if r["chosen"].strip() != r["rejected"].strip()]
    batch = next(iter(data.loader("train", batch_size=8)))
    template = smollm2.chat_template
    for row, record in enumerate(kept[:8]):
        prompt = smollm2.encode(template.render(conversation(record)))
        for key in ("chosen", "rejected"):
            ids, mask = batch[f"{key}_input_ids"][row], batch[f"{key}_response_mask"][row]
            start, length = int(mask.nonzero()[0]), int(mask.sum())
            assert ids[:start].tolist() == prompt
            full = smollm2.encode(template.render(conversation(record, record[key]), add_generation_prompt=False))
            assert ids[:start + length].tolist() + smollm2.encode("\n") == full  # the reply and its <|im_end|>
            assert smollm2.decode(ids[mask].tolist()) == record[key] + IM_END


def test_eval_perplexity_scores_a_model_in_its_own_template_and_in_alpaca(hf_dir: Path, records_file: Path,
                                                                          tmp_path: Path, capsys):
    from gptlab.cli.evaluate import main

    export = tiny_export(tmp_path / "model", hf_dir)
    tokenizer = get_tokenizer(str(hf_dir))
    val = InstructionDataModule(path=str(records_file)).load_splits()["val"]
    for name in (CHAT_TEMPLATE, "alpaca"):
        assert main(["perplexity", str(export), "--data", str(records_file), "--split", "val", "--mask-prompt",
                     "--prompt-style", name]) == 0
        out = capsys.readouterr().out
        style = resolve_style(name, tokenizer)
        responses = sum(len(tokenizer.encode(style.prompt_and_response(r)[1])) + 1 for r in val)  # + <|im_end|>
        assert f"over {responses} tokens" in out and f"({name}, responses only)" in out


def test_respond_answers_the_first_records_in_the_tokenizers_template(hf_dir: Path, records_file: Path,
                                                                      tmp_path: Path):
    from gptlab.cli.respond import main

    export = tiny_export(tmp_path / "model", hf_dir)
    out = tmp_path / "responses.jsonl"
    assert main([str(export), "--data", str(records_file), "--split", "test", "--limit", "1", "--out", str(out),
                 "--prompt-style", CHAT_TEMPLATE, "--max-new-tokens", "3", "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["generation"]["prompt_style"] == CHAT_TEMPLATE
    assert rows[0]["instruction"] == InstructionDataModule(path=str(records_file)).load_splits()["test"][0]["instruction"]


def test_chat_template_on_a_model_whose_tokenizer_has_none_is_one_line(tmp_path: Path, records_file: Path, capsys):
    from gptlab.cli.evaluate import main

    torch.manual_seed(0)
    export = save_model(GPT(GPTConfig.from_dict({"preset": "nano"})), tmp_path / "gpt2-model")
    assert main(["perplexity", str(export), "--data", str(records_file), "--prompt-style", CHAT_TEMPLATE]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "has none" in error and "alpaca" in error
