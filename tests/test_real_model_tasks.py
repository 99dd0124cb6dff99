"""Every task from the real SmolLM2-135M-Instruct, a few steps on short sequences of the book's data:
pretraining and instruction tuning (LoRA and full), the spam classifier (the book's recipe: a new
2-class head in place of the tied output head, the last block trained) and DPO with the adapters
off as reference. Each step repeats one batch, so the loss must go down."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from gptlab.checkpoints import load_gguf
from gptlab.data import InstructionDataModule, PreferenceDataModule
from gptlab.data.classification import encode_texts
from gptlab.tasks import CausalLMTask, ClassifyTask, PreferenceTask
from gptlab.tasks.causal_lm import next_token_loss
from gptlab.tokenizer import get_tokenizer

CONF = Path(__file__).resolve().parents[1] / "gptlab" / "conf"
SMOLLM2 = dict(OmegaConf.to_container(OmegaConf.load(CONF / "model" / "smollm2-135m.yaml")))
CONSTANT = {"name": "constant", "warmup_steps": 0}
# One worker runs this module under `pytest -n N` (--dist loadgroup), so the weights load once per fixture.
pytestmark = pytest.mark.xdist_group(__name__)


def fit(task: L.LightningModule, loader: DataLoader, steps: int, tmp_path: Path) -> None:
    L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
              limit_val_batches=0, default_root_dir=tmp_path).fit(task, loader)


def repeated(batch: object, times: int) -> DataLoader:
    """A loader that yields ``batch`` ``times`` times: every step sees the same examples."""
    return DataLoader([batch] * times, batch_size=None)


def lm_loss(task: CausalLMTask, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    with torch.no_grad():
        return float(next_token_loss(task.eval()(batch[0]), batch[1]))


@pytest.fixture(scope="module")
def instruction_batch(smollm2_gguf: Path, shared_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = InstructionDataModule(path=str(shared_data / "instruction-data.json"), sha256=None,
                                 tokenizer=str(smollm2_gguf), batch_size=2, allowed_max_length=48)
    data.setup()
    return next(iter(data.train_dataloader()))


@pytest.mark.parametrize("trainable_layers, lr", [("lora", 2e-3), ("all", 1e-4)])
def test_instruction_tuning_from_the_real_model_lowers_the_loss(smollm2_gguf, instruction_batch, trainable_layers,
                                                                lr, tmp_path):
    task = CausalLMTask(SMOLLM2, init=str(smollm2_gguf), trainable_layers=trainable_layers,
                        optimizer={"lr": lr, "weight_decay": 0.0}, scheduler=CONSTANT)
    before = lm_loss(task, instruction_batch)
    assert before < 4.0  # a pretrained model reads English; uniform guessing costs ln(49152) = 10.8
    fit(task.train(), repeated(instruction_batch, 3), steps=3, tmp_path=tmp_path)
    assert lm_loss(task, instruction_batch) < before - 0.2


def test_continued_pretraining_on_the_verdict_lowers_the_loss(smollm2_gguf, shared_data, tmp_path):
    ids = get_tokenizer(str(smollm2_gguf)).encode((shared_data / "the-verdict.txt").read_text(encoding="utf-8"))
    window = torch.tensor(ids[:2 * 33]).view(2, 33)
    batch = (window[:, :-1], window[:, 1:])
    task = CausalLMTask(SMOLLM2, init=str(smollm2_gguf), trainable_layers="lora",
                        optimizer={"lr": 2e-3, "weight_decay": 0.0}, scheduler=CONSTANT)
    before = lm_loss(task, batch)
    fit(task.train(), repeated(batch, 3), steps=3, tmp_path=tmp_path)
    assert lm_loss(task, batch) < before - 0.2


def test_spam_classifier_replaces_the_tied_head_and_leaves_the_embedding_untouched(smollm2_gguf, tmp_path):
    tokenizer = get_tokenizer(str(smollm2_gguf))
    texts = ["WINNER!! You have been selected to receive a $900 prize. Call now to claim.",
             "Ok lar... Joking wif u oni...", "Free entry in 2 a wkly comp to win FA Cup final tkts, text FA to 87121",
             "I'm gonna be home soon and i don't want to talk about this stuff anymore tonight"]
    batch = {**encode_texts(texts, tokenizer), "labels": torch.tensor([1, 0, 1, 0])}
    task = ClassifyTask(SMOLLM2, init=str(smollm2_gguf), num_classes=2, trainable_layers="last_block",
                        token_position="last", optimizer={"lr": 1e-4, "weight_decay": 0.0}, scheduler=CONSTANT)
    gpt = task.gpt
    pretrained = load_gguf(smollm2_gguf).tok_emb.weight
    assert gpt.out_head.weight.shape == (2, 576) and gpt.out_head.weight is not gpt.tok_emb.weight
    assert torch.equal(gpt.tok_emb.weight, pretrained) and not gpt.tok_emb.weight.requires_grad
    trainable = {name.split(".")[0] for name, p in gpt.named_parameters() if p.requires_grad}
    assert trainable == {"trf_blocks", "final_norm", "out_head"}
    assert all(p.requires_grad == name.startswith("trf_blocks.29.")
               for name, p in gpt.trf_blocks.named_parameters(prefix="trf_blocks"))

    def loss() -> float:
        with torch.no_grad():
            logits = task.eval().classify(batch["input_ids"], batch["attention_mask"])
            return float(torch.nn.functional.cross_entropy(logits, batch["labels"]))

    before = loss()
    fit(task.train(), repeated(batch, 4), steps=4, tmp_path=tmp_path)
    assert loss() < before
    assert torch.equal(gpt.tok_emb.weight, pretrained)  # the shared embedding never trained


def test_dpo_from_the_real_model_with_adapters_off_as_reference(smollm2_gguf, shared_data, tmp_path):
    data = PreferenceDataModule(path=str(shared_data / "instruction-data-with-preference.json"), sha256=None,
                                tokenizer=str(smollm2_gguf), max_length=48, batch_size=2, shuffle=False,
                                cache_dir=str(tmp_path / "cache"))
    data.setup()
    batch = next(iter(data.train_dataloader()))
    task = PreferenceTask(SMOLLM2, init=str(smollm2_gguf), reference="lora", trainable_layers="lora",
                          beta=0.1, optimizer={"lr": 2e-3, "weight_decay": 0.0}, scheduler=CONSTANT)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, log_every_n_steps=1, default_root_dir=tmp_path)
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))

    trainer.callbacks.append(Record())
    trainer.fit(task, repeated(batch, 4))
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)  # the policy starts as its reference
    assert losses[-1] < losses[0] - 0.05
