"""The frozen reference a preference method compares with, and a finished run's adapter to start from.

The reference is the model being trained with its adapter switched off, or, when the run
starts from an SFT run's adapter, that adapter loaded a second time and frozen: no second
model is held in memory. The losses that use it are in ``train/methods``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from peft import PeftModel

REFERENCE = "reference"  # the name of the frozen copy of a starting adapter


@contextmanager
def reference_model(model: PeftModel):
    """The reference: the named frozen starting adapter when there is one, else the adapter switched off."""
    was_training = model.training
    model.eval()  # deterministic: no dropout in the reference
    try:
        if REFERENCE in model.peft_config:
            active = model.active_adapter
            model.set_adapter(REFERENCE, inference_mode=True)
            try:
                yield model
            finally:
                model.set_adapter(active)  # trainable again, and the reference frozen
        else:
            with model.disable_adapter():
                yield model
    finally:
        model.train(was_training)


def start_from_adapter(base, adapter_dir: Path, with_reference: bool) -> PeftModel:
    """A run's adapter (the recipe opened it) to train further; for DPO also loaded again, frozen, as the reference."""
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
    if with_reference:
        model.load_adapter(str(adapter_dir), adapter_name=REFERENCE, is_trainable=False)
        model.set_adapter("default")  # trains; the reference stays frozen
    return model
