"""DPO and ORPO compute their formulas on log-probs computed separately, the reference is the model
without its adapter, and accumulated or split steps equal one large batch."""

from __future__ import annotations

import math

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, TrainingArguments

from lorakit.config import LoraConfig, PreferenceConfig
from lorakit.config_file import load_config, save_config
from lorakit.data.encode import IGNORE_INDEX, encode_conversation
from lorakit.data.collate import PairCollator
from lorakit.data.pairs import EncodedPair
from lorakit.model.lora import apply_lora
from lorakit.model.loss import sequence_logps
from lorakit.templates import resolve_template
from lorakit.train import recipe
from lorakit.train.methods import METHODS
from lorakit.train.methods.pairs import split_pairs
from lorakit.train.preference import REFERENCE, reference_model, start_from_adapter
from lorakit.train.trainer import LorakitTrainer
from tests.conftest import make_tokenizer
from tests.train.helpers import LOSS_RTOL, adapter, assert_same_update, metrics, tiny_config

# Answers of very different lengths, so a mean of per-micro-batch means would differ from the batch's.
PAIRS = [
    {"prompt": "What is two plus two?", "chosen": "It is four.", "rejected": "Five."},
    {"prompt": "Extract the name: Maria is 34.", "chosen": '{"name": "Maria"}',
     "rejected": "Sure! The name of the person in the text is Maria, and she is 34 years old."},
    {"prompt": "Hi", "chosen": "Hello! How can I help you today?", "rejected": "Go away."},
    {"prompt": "Say the city of Maria.", "chosen": "Lisbon", "rejected": "The city of Maria is Lisbon, I think."},
]


def encoded_pairs() -> tuple:
    tokenizer = make_tokenizer("chatml")
    template = resolve_template(tokenizer, "auto")

    def side(row, key):
        conv = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row[key]}]
        return encode_conversation(tokenizer, template, conv, 512)

    return tokenizer, [EncodedPair(side(r, "chosen"), side(r, "rejected")) for r in PAIRS]


def lora_model(model_dir) -> PeftModel:
    model = apply_lora(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(rank=4, dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():  # B away from zero, so the tuned model differs from the reference
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    return model.train()


def logp_by_hand(model, item) -> tuple[float, int]:
    """Sum and count of an answer's token log-probs from the model's own full logits, one sequence alone."""
    ids = torch.tensor([item.input_ids])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
    picked = [float(logps[t, item.labels[t + 1]]) for t in range(len(item.labels) - 1)
              if item.labels[t + 1] != IGNORE_INDEX]
    return sum(picked), len(picked)


class PairLosses:
    """A trainer running one pair method, asked for its per-pair losses."""

    def __init__(self, model, tmp_path, method: str, **preference):
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
        self.method = METHODS[method](PreferenceConfig(**preference))
        self.trainer = LorakitTrainer(model=model, args=args, method=self.method)

    def pair_losses(self, model, batch):
        return self.method.pair_losses(self.trainer, model, batch)


def trainer(model, tmp_path, method: str, **preference) -> PairLosses:
    return PairLosses(model, tmp_path, method, **preference)


@pytest.mark.parametrize("kind", ["sigmoid", "ipo"])
def test_dpo_loss_equals_the_formula_on_separately_computed_logps(tiny_model_dir, tmp_path, kind):
    _, pairs = encoded_pairs()
    model = lora_model(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()  # the reference, as a separate model
    beta = 0.3
    expected = []
    for pair in pairs:
        (pc, nc), (pr, nr) = logp_by_hand(model, pair.chosen), logp_by_hand(model, pair.rejected)
        (rc, _), (rr, _) = logp_by_hand(base, pair.chosen), logp_by_hand(base, pair.rejected)
        if kind == "sigmoid":
            expected.append(-math.log(1 / (1 + math.exp(-beta * ((pc - rc) - (pr - rr))))))
        else:  # on per-token means
            expected.append(((pc / nc - rc / nc) - (pr / nr - rr / nr) - 1 / (2 * beta)) ** 2)
    batch = PairCollator(0)(pairs)
    losses, values = trainer(model, tmp_path, "dpo", beta=beta, loss=kind).pair_losses(model, batch)
    torch.testing.assert_close(losses.double(), torch.tensor(expected, dtype=torch.double), rtol=1e-4, atol=1e-5)
    assert values["rewards/accuracies"].tolist() == [float(c > r) for c, r in
                                                     zip(values["rewards/chosen"], values["rewards/rejected"])]
    assert any(p.grad is None for p in model.parameters())  # nothing ran backward yet
    losses.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_orpo_loss_equals_its_formula(tiny_model_dir, tmp_path):
    _, pairs = encoded_pairs()
    model = lora_model(tiny_model_dir)
    weight = 0.25
    expected = []
    for pair in pairs:
        (pc, nc), (pr, nr) = logp_by_hand(model, pair.chosen), logp_by_hand(model, pair.rejected)
        mc, mr = pc / nc, pr / nr
        odds = (mc - math.log(1 - math.exp(mc))) - (mr - math.log(1 - math.exp(mr)))
        expected.append(-mc - weight * math.log(1 / (1 + math.exp(-odds))))
    losses, values = trainer(model, tmp_path, "orpo", orpo_lambda=weight).pair_losses(model, PairCollator(0)(pairs))
    torch.testing.assert_close(losses.double(), torch.tensor(expected, dtype=torch.double), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(values["nll"].double(), torch.tensor([-e for e in (
        logp_by_hand(model, p.chosen)[0] / logp_by_hand(model, p.chosen)[1] for p in pairs)], dtype=torch.double),
        rtol=1e-4, atol=1e-5)


def test_reference_logps_are_the_adapter_disabled_models(tiny_model_dir):
    _, pairs = encoded_pairs()
    batch = PairCollator(0)(pairs)
    model = lora_model(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        policy, _ = sequence_logps(model, batch)
        with reference_model(model) as reference:
            ref, _ = sequence_logps(reference, batch)
        after, _ = sequence_logps(model, batch)
        alone, _ = sequence_logps(base, batch)
    torch.testing.assert_close(ref, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy, ref)  # the adapter does move the log-probs
    torch.testing.assert_close(after, policy)  # and is back on afterwards, in training mode
    assert model.training


def test_a_starting_adapter_is_the_frozen_reference(tiny_model_dir, tmp_path):
    _, pairs = encoded_pairs()
    batch = PairCollator(0)(pairs)
    lora_model(tiny_model_dir).save_pretrained(tmp_path / "sft")
    # a finished run's folder: the adapter and the config naming its base
    save_config(load_config(None, [f"model.name={tiny_model_dir}"]), tmp_path / "sft" / "lorakit.yaml")
    model = start_from_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "sft", True).train()
    with torch.no_grad():  # training has moved the tuned copy away from where it started
        for name, p in model.named_parameters():
            if "lora_A.default" in name:
                p.mul_(1.5)
    sft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(tmp_path / "sft"))
    with torch.no_grad():
        with reference_model(model) as reference:
            ref, _ = sequence_logps(reference, batch)
        policy, _ = sequence_logps(model, batch)
        expected, _ = sequence_logps(sft.eval(), batch)
    torch.testing.assert_close(ref, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy, ref)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default" in n for n in trainable)  # only the tuned copy trains
    assert any(f".{REFERENCE}" in n for n, _ in model.named_parameters())


def test_split_passes_keep_pairs_together_and_give_the_same_loss(tiny_model_dir, tmp_path):
    _, pairs = encoded_pairs()
    batch = PairCollator(0)(pairs)
    passes = split_pairs(batch, 40)
    assert len(passes) > 1
    seen = sorted(int(row.sum()) for p in passes for row in p["attention_mask"])
    assert seen == sorted(int(row.sum()) for row in batch["attention_mask"])  # every row once, none cut
    model = lora_model(tiny_model_dir)
    train = trainer(model, tmp_path, "dpo")
    whole, _ = train.pair_losses(model, batch)
    parts = torch.cat([train.pair_losses(model, p)[0] for p in passes])
    torch.testing.assert_close(parts.sum(), whole.sum(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["dpo", "orpo", "simpo", "kto"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_accumulated_and_split_steps_equal_one_large_batch(tiny_model_dir, tmp_path, method, precision):
    # SGD, not Adam: Adam divides each gradient by its own size, so LoRA A's first, near-zero gradients
    # (B starts at zero) would turn summation-order noise into full-size steps. Step 1 of DPO has the
    # reference's loss (log 2); steps 2 and 3 compare a tuned model against it.
    common = ("train.max_steps=3", "train.logging_steps=1", "train.learning_rate=0.1", "train.optimizer=sgd",
              "train.warmup=0",
              "train.scheduler=constant", "train.save_steps=null", f"train.precision={precision}",
              f"method={method}", "data.shuffle=false", "data.cache_dir=null")
    runs = {
        "one": ("train.batch_size=4", "train.grad_accum=1", "train.micro_batch_tokens=0"),
        "accumulated": ("train.batch_size=1", "train.grad_accum=4", "train.micro_batch_tokens=0"),
        "split": ("train.batch_size=4", "train.grad_accum=1", "train.micro_batch_tokens=40"),
    }
    found = {}
    for name, settings in runs.items():
        cfg = tiny_config(tiny_model_dir, tmp_path / name, *settings, *common, rows=PAIRS * 2)
        recipe.run(cfg)
        found[name] = ([r["loss"] for r in metrics(cfg.output_dir) if "loss" in r], adapter(cfg.output_dir))
    losses, weights = found.pop("one")
    # DPO's loss is a function of a difference of four sums of log-probs, and bf16 rounds each sum:
    # the difference amplifies it. On a Xeon with AMX the batch of 8 rows and the runs of 2 rows
    # measured 1.1% apart at step 3 (each within 1.2% of float32; on an AMD EPYC 0.1% apart). KTO's
    # loss is a function of the same log-ratios. SimPO's falls to 0.15 by step 3, where -log sigmoid(z)
    # turns z's bf16 rounding into a larger relative error: 0.6% on the AMD EPYC. All three get 2%.
    rtol = 2e-2 if method in ("dpo", "kto", "simpo") and precision == "bf16" else LOSS_RTOL[precision]
    assert losses[-1] < losses[0] - 1e-3  # the model moved: later steps are not the reference's loss again
    for name, (other_losses, other_weights) in found.items():
        assert other_losses == pytest.approx(losses, rel=rtol), name
        assert_same_update(weights, other_weights, precision)


@pytest.mark.parametrize(("settings", "message"), [
    (["method=dpo", "data.format=alpaca"], "data.format=alpaca is not such a shape"),
    (["data.format=preference"], "train them with method: dpo or orpo"),
    (["method=orpo", "train.packing=true"], "train.packing and train.group_by_length do not apply"),
    (["method=dpo", "preference.loss=hinge"], "preference.loss"),
])
def test_preference_settings_that_cannot_work_are_refused(settings, message):
    from lorakit.config import ConfigError
    from lorakit.config_file import load_config

    with pytest.raises(ConfigError, match=message):
        load_config(None, settings)
    assert load_config(None, ["method=orpo", "preference.lambda=0.3"]).preference.orpo_lambda == 0.3


def test_a_missing_starting_adapter_is_named(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, "method=dpo", f"model.adapter={tmp_path / 'nothing'}",
                      "data.cache_dir=null", rows=PAIRS)
    with pytest.raises(FileNotFoundError,
                       match=r"nothing is not a lorakit run folder \(no such folder\); give model.adapter a folder"):
        recipe.run(cfg)
