"""SFT: learn the answers. The loss is the mean cross-entropy over every answer token of the step.

Each micro-batch divides its answer tokens' summed loss by the answer tokens of the whole
optimizer step (the Trainer counts them over every process), so accumulation, split passes
and several processes all give the loss of one large batch, every answer token weighted
equally. Only the answer positions are projected to the vocabulary (``model/loss.py``).
"""

from __future__ import annotations

from lorakit.config import ConfigError
from lorakit.data.collate import PackCollator, PadCollator
from lorakit.data.samples import SAMPLES
from lorakit.model.loss import answer_only_loss, output_head
from lorakit.train.methods.base import Method
from lorakit.train.microbatch import split_batch


class SFT(Method):
    name = "sft"
    rows = SAMPLES
    perplexity = True
    compiles = True

    @classmethod
    def check(cls, cfg):
        if cfg.data.format == "preference":
            raise ConfigError("data.format=preference holds pairs of answers: train them with method: dpo or orpo, "
                              "or with simpo or kto")

    def collator(self, pad_token_id, packing):
        return PackCollator() if packing else PadCollator(pad_token_id)

    def train_rows(self, encoded):
        return [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]

    def split(self, inputs, budget, packed):
        return split_batch(inputs, budget, packed)

    def loss(self, step, model, inputs, num_items):
        if not (model.training and step.selective_loss):
            return None  # evaluation, or logits the model post-processes: the model's own loss
        head = output_head(step.unwrap(model))
        return answer_only_loss(model, head, inputs, num_items, step.loss_chunk_size, autocast=step.autocast()), {}
