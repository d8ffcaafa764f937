"""What each "auto" of a training run comes to on this machine, decided in one place and written down.

The config leaves much to the machine: the precision, how big a pass is, which attention runs,
whether LoRA layers are fused and the decoder layers compiled. ``resolve_plan`` settles all of
it once the model is loaded (several choices depend on what the model can do) and returns a
``Plan``: each choice with its value and a short reason. The recipe hands the values to the
trainer, logs the plan once and saves it in ``summary.json`` under ``plan``.

Two choices are made before the plan, by the same rules it reports: the threads (set before the
data is tokenized: ``hardware.threads``) and the weights' dtype (``model.dtype``, when the model
loads: ``model.dtype.resolve_dtype``); the plan records what they came to and why. One is made
after it: ``train.compile: auto`` times the first steps (``train/auto_compile.py``); the plan
records the setting and what, if anything, keeps ``auto`` from compiling here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Generic, TypeVar

import torch

from lorakit.config import ModelConfig, TrainConfig
from lorakit.errors import LorakitError
from lorakit.hardware.cpu import cpu_has_fp16
from lorakit.hardware.speed import EAGER_ENV, auto_half, cpu_eager_attention_tokens, pinned_or_measured
from lorakit.hardware.threads import thread_count
from lorakit.model.compiled_layers import compiler_missing, decoder_layers
from lorakit.model.loss import causal_lm
from lorakit.model.quantization import is_quantized
from lorakit.train import distributed
from lorakit.train.auto_compile import MEASURE_STEPS, NO_LAYERS
from lorakit.train.methods import METHODS
from lorakit.train.passes import pass_setup

T = TypeVar("T")


class PrecisionError(LorakitError, ValueError):
    """train.precision asks for what this machine cannot compute."""


@dataclass(frozen=True)
class Decided(Generic[T]):
    value: T
    why: str


@dataclass(frozen=True)
class Plan:
    """The run's resolved settings; ``trainer_options`` is what the trainer takes of them."""

    device: Decided[str]
    threads: Decided[int]
    weight_dtype: Decided[str]
    precision: Decided[str]
    micro_batch_tokens: Decided[int]
    pass_packing: Decided[bool]
    attention: Decided[str | None]  # the model's own attention implementation
    eager_attention_tokens: Decided[int]
    per_sample_attention: Decided[bool]
    fused_lora: Decided[bool]
    compile: Decided[bool | str]  # the setting: auto decides after timing steps
    compile_blocker: str | None  # what keeps auto from compiling here, if anything

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        decided = {name: d for name, d in self.as_dict().items() if isinstance(d, dict)}
        return [f"{name}: {_shown(d['value'])} ({d['why']})" for name, d in decided.items()]

    def trainer_options(self) -> dict:
        return {
            "micro_batch_tokens": self.micro_batch_tokens.value,
            "pass_packing": self.pass_packing.value,
            "eager_attention_tokens": self.eager_attention_tokens.value,
            "per_sample_attention": self.per_sample_attention.value,
            "fused_lora": self.fused_lora.value,
            "compile_layers": self.compile.value,
            "compile_blocker": self.compile_blocker,
        }


def _shown(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)  # as the YAML says it


def _configured(key: str, value) -> Decided:
    return Decided(value, f"train.{key}={_shown(value)}")


def _precision(requested: str) -> Decided[str]:
    on_gpu = torch.cuda.is_available()
    if requested == "bf16" and on_gpu and not torch.cuda.is_bf16_supported():
        raise PrecisionError("train.precision=bf16 but this GPU has no bf16; use fp16 or auto")
    if requested == "fp16" and not on_gpu:
        # Refused on every CPU, also one that computes float16 natively (where model.dtype=float16
        # is allowed, model/dtype.py): accelerate runs no fp16 autocast and no loss scaling on a
        # CPU, so the run would compute in float32 while saying fp16 (tests/train/test_plan.py).
        hint = "; for float16 weights on this CPU set model.dtype=float16" if cpu_has_fp16() else ""
        raise PrecisionError(f"train.precision=fp16 needs a GPU; on CPU use bf16 (if supported) or fp32{hint}")
    if requested != "auto":
        return _configured("precision", requested)
    half, why = auto_half()
    return Decided(half or "fp32", f"auto: {why}")


def pick_precision(requested: str) -> str:
    """Resolve train.precision to fp32, bf16 or fp16 for the device this process trains on."""
    return _precision(requested).value


def compile_blocker(train_cfg: TrainConfig, method: str, on_gpu: bool, quantized: bool) -> str | None:
    """What keeps train.compile auto from compiling here: it compiles only the setups it was measured on."""
    if on_gpu:
        return "a GPU (not yet measured there; train.compile=true compiles)"
    if distributed.world_size() > 1:
        return "several processes"
    if quantized:
        return "a quantized base"
    if train_cfg.gradient_checkpointing:
        return "activation checkpointing"
    if not METHODS[method].compiles:
        # A preference step also runs the reference (adapter off), a second graph to compile: not measured.
        measured = ", ".join(name for name, known in METHODS.items() if known.compiles)
        return f"{method} (measured for {measured} only)"
    return compiler_missing("cpu")


def _compile(setting: bool | str, blocker: str | None) -> Decided[bool | str]:
    if setting != "auto":
        return _configured("compile", setting)
    if blocker:
        return Decided(setting, f"auto: off for {blocker}")
    return Decided(setting, f"auto: decided after timing step {MEASURE_STEPS}, by whether the steps left repay it")


def _on_cpu(key: str, configured: bool | None, on_gpu: bool) -> Decided[bool]:
    """A speed switch that defaults to on where it was measured: on a CPU."""
    if configured is not None:
        return _configured(key, configured)
    return Decided(not on_gpu, "auto: off on a GPU (not measured there)" if on_gpu else "auto: on a CPU")


def _micro_batch_tokens(configured: int | None, on_gpu: bool) -> Decided[int]:
    if configured is not None:
        return _configured("micro_batch_tokens", configured)
    if on_gpu:
        return Decided(0, "auto: batches not split on a GPU, which pads nearly for free")
    return Decided(1024, "auto: on a CPU every padded position costs as much as a real token")


def _pass_packing(configured: bool | None, packed: bool) -> Decided[bool]:
    if configured is not None:
        return _configured("pass_packing", configured)
    return Decided(packed, f"auto: the model {'reads' if packed else 'may not read'} samples from position ids")


def _eager_attention_tokens(configured: int | None, on_gpu: bool, precision: str) -> Decided[int]:
    """Eager attention is the faster one on a CPU for short samples (up to the probe's crossover);
    a GPU keeps the model's own."""
    if configured is not None:
        return _configured("eager_attention_tokens", configured)
    if on_gpu:
        return Decided(0, "auto: the model's own attention on a GPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    tokens = cpu_eager_attention_tokens(dtype)
    return Decided(tokens, f"auto: where eager stops beating sdpa in {precision} ({pinned_or_measured(EAGER_ENV)})")


def resolve_plan(model_cfg: ModelConfig, train_cfg: TrainConfig, method: str, model: torch.nn.Module) -> Plan:
    """Every choice the config leaves to the machine, for ``model`` (loaded, LoRA applied) on this device."""
    on_gpu = torch.cuda.is_available()
    base = causal_lm(model)
    precision = _precision(train_cfg.precision)
    eager = _eager_attention_tokens(train_cfg.eager_attention_tokens, on_gpu, precision.value)
    per_sample = _on_cpu("per_sample_attention", train_cfg.per_sample_attention, on_gpu)
    # What the model allows of them: only sdpa is switched per pass, per-sample attention only for
    # plain causal attention, and packed passes only where the model reads sample boundaries.
    setup = pass_setup(model, train_cfg.pass_packing, eager.value, per_sample.value)
    if setup.eager_tokens != eager.value:
        eager = Decided(setup.eager_tokens, f"the model's {setup.own_attention} attention cannot be switched per pass")
    if setup.per_sample != per_sample.value:
        per_sample = Decided(False, f"not for {getattr(base.config, 'model_type', 'this model')}'s attention")
    blocker = compile_blocker(train_cfg, method, on_gpu, is_quantized(base))
    if blocker is None and not decoder_layers(model):
        blocker = NO_LAYERS
    return Plan(
        device=Decided("cuda" if on_gpu else "cpu", "a CUDA GPU is there" if on_gpu else "no CUDA GPU"),
        threads=Decided(torch.get_num_threads(), thread_count()[1]),
        weight_dtype=Decided(str(base.dtype).removeprefix("torch."), _dtype_why(model_cfg.dtype)),
        precision=precision,
        micro_batch_tokens=_micro_batch_tokens(train_cfg.micro_batch_tokens, on_gpu),
        pass_packing=_pass_packing(train_cfg.pass_packing, setup.packed),
        attention=Decided(setup.own_attention, "the model's own, as loaded"),
        eager_attention_tokens=eager,
        per_sample_attention=per_sample,
        fused_lora=_on_cpu("fused_lora", train_cfg.fused_lora, on_gpu),
        compile=_compile(train_cfg.compile, blocker),
        compile_blocker=blocker,
    )


def _dtype_why(configured: str) -> str:
    """Why the weights loaded in their dtype (the choice is ``resolve_dtype``'s, made at load time)."""
    return f"auto: {auto_half()[1]}" if configured == "auto" else f"model.dtype={configured}"
