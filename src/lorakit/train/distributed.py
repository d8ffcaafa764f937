"""Multi-process training on the engines people already run: torchrun, accelerate, FSDP, DeepSpeed.

lorakit starts no processes of its own making. ``lorakit train --nproc N`` hands itself to
torch's elastic launcher (the code behind ``torchrun``), whose agent watches the workers and
stops them all, with a non-zero exit, as soon as one of them dies. Inside each worker the
transformers Trainer (through accelerate) does the data-parallel work; this module only
chooses its options, checks the combination can work, and gives the recipe the few
cross-rank agreements it needs (which checkpoint to resume, token totals).
"""

from __future__ import annotations

import importlib.util
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from lorakit.config.train import DistributedConfig
from lorakit.errors import LorakitError

log = logging.getLogger(__name__)


class DistributedError(LorakitError, ValueError):
    """Several processes cannot run as asked on this machine; the message says what can."""


class LaunchError(LorakitError, RuntimeError):
    """A worker of a multi-process run failed; the message names the rank and its exit."""

    exit_code = 1  # the run itself failed (the rank printed why), as a one-process run's error would


class LaunchInterrupted(LorakitError):
    """Ctrl-C or SIGTERM stopped a multi-process run; every rank saved a checkpoint if it had time."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention, as a one-process run: 130 or 143
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        super().__init__(f"{name}: every rank stopped after its current step and saved a checkpoint if it could "
                         "(a half-written one is ignored)")


def launch(nproc: int, child_args: list[str]) -> None:
    """Run ``python -m lorakit <child_args>`` in ``nproc`` processes on this machine.

    ``--standalone`` picks a free local rendezvous port, so two runs on one machine do not
    collide; ``max_restarts=0`` because a LoRA run that lost a rank should stop and be resumed
    from its checkpoint by the user, not silently restarted from scratch.
    """
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise DistributedError(f"--nproc must be at least 1, got {nproc}")
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise DistributedError(f"--nproc {nproc} but this machine has {torch.cuda.device_count()} GPU(s); one process per GPU")
    launcher_args = ["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "--module", "lorakit", *child_args]
    try:
        run(get_args_parser().parse_args(launcher_args))
    except SignalException as err:
        # The agent has passed the signal to every worker (each saves a checkpoint at its step's
        # end, see callbacks.StopOnInterrupt) and waited for them (SIGKILL after 30 s).
        raise LaunchInterrupted(int(err.sigval)) from None
    except ChildFailedError as err:
        codes = {f.exitcode for f in _causes(err.failures).values()}
        # A worker, not the launcher, was signalled: it stopped as one process would (exit 128 + signal),
        # after the ranks agreed on the step (the others may be stopped by the agent after that).
        if codes <= {128 + signal.SIGINT, 128 + signal.SIGTERM}:
            raise LaunchInterrupted(max(codes) - 128) from None
        raise LaunchError(_describe_failures(err.failures)) from None


def _causes(failures: dict) -> dict:
    """The ranks that failed of themselves, not the ones the launcher then stopped with SIGTERM."""
    return {r: f for r, f in failures.items() if f.exitcode != -signal.SIGTERM} or failures


def _describe_failures(failures: dict) -> str:
    """Name the rank(s) that failed, not the ones the launcher then stopped with SIGTERM."""
    causes = _causes(failures)
    # A signal has no traceback to show, so name it; a Python error was printed by the rank itself.
    text = "; ".join(
        f"rank {rank} exited with {f.exitcode}" + (f" ({f.message})" if f.exitcode < 0 else "")
        for rank, f in sorted(causes.items())
    )
    stopped = sorted(set(failures) - set(causes))
    if stopped:
        text += f"; the launcher then stopped rank(s) {', '.join(map(str, stopped))}"
    return f"multi-process training failed: {text}. The failing rank's own error, if any, is printed above."


def launched() -> bool:
    """True inside a worker started by torchrun or ``accelerate launch`` (both use torch elastic)."""
    return dist.is_available() and dist.is_torchelastic_launched()


def init_process_group(cfg: DistributedConfig, on_gpu: bool) -> None:
    """Start gloo with the configured timeout on CPU before the Trainer would start it without one.

    TrainingArguments passes ``ddp_timeout`` to the process group only on GPUs; on CPU
    accelerate would use torch's default (30 min), so a hung rank would stall the others that
    long. Starting the group here first is what accelerate expects (it reuses an existing one).
    """
    if on_gpu or not launched() or dist.is_initialized():
        return
    dist.init_process_group(backend="gloo", timeout=timedelta(seconds=cfg.timeout_s))


def check_supported(cfg: DistributedConfig, on_gpu: bool) -> None:
    """Refuse, before any model is loaded, a strategy this machine cannot run."""
    if cfg.strategy in ("ddp", "fsdp"):  # fsdp on CPU: see fsdp_on_cpu
        return
    if not on_gpu:
        raise DistributedError(
            f"train.distributed.strategy={cfg.strategy} needs CUDA GPUs; on CPU use strategy ddp or fsdp "
            "(LoRA's trainable weights are small, so plain data parallelism loses little)"
        )
    if cfg.strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise DistributedError(f"train.distributed.strategy={cfg.strategy} needs DeepSpeed: pip install 'lorakit[deepspeed]'")


@contextmanager
def fsdp_on_cpu(enabled: bool) -> Iterator[None]:
    """While the Trainer builds its Accelerator: a CPU (gloo) run given an FSDP plugin shards with it.

    accelerate 1.16 makes a run FSDP only on accelerator devices (``AcceleratorState.__init__``
    checks the plugin inside its GPU/NPU/XPU branch); on CPU it drops the plugin without a word
    and trains DDP. torch's ``fully_shard`` runs on CPU with gloo, so the state is made what it
    would be on a GPU: the same FSDP2 code path then shards, gathers and saves on CPU too.
    """
    if not enabled:
        yield
        return
    from accelerate import state
    from accelerate.utils import DistributedType

    original = state.AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # what Accelerator reads

    state.AcceleratorState.__init__ = init
    try:
        yield
    finally:
        state.AcceleratorState.__init__ = original


def shards_weights(cfg: DistributedConfig) -> bool:
    """fsdp and ZeRO-3 split the base weights themselves across ranks (ddp and ZeRO-2 keep a copy on each)."""
    return cfg.strategy in ("fsdp", "deepspeed_zero3")


def trainer_options(
    cfg: DistributedConfig, on_gpu: bool, activation_checkpointing: bool, quantized: bool = False
) -> dict[str, Any]:
    """TrainingArguments keywords for the strategy; the Trainer and accelerate do the rest.

    ``quantized``: the base weights are 4-bit (QLoRA). The loader must then store them in the
    compute dtype (bitsandbytes' ``bnb_4bit_quant_storage``) for FSDP or ZeRO-3 to shard them.
    """
    options: dict[str, Any] = {
        # Named only when launched: accelerate treats a named backend as a request for a process group.
        "ddp_backend": ("nccl" if on_gpu else "gloo") if launched() else None,
        "ddp_timeout": cfg.timeout_s,
        # Every LoRA weight takes part in every step; searching for unused ones costs a graph walk per step.
        "ddp_find_unused_parameters": False,
    }
    if cfg.strategy == "fsdp":
        options["fsdp"] = True
        options["fsdp_config"] = {
            "version": 2,  # per-parameter sharding: frozen base and trainable LoRA weights mix in one unit
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # one unit per decoder layer (the model's _no_split_modules)
            "state_dict_type": "FULL_STATE_DICT",  # checkpoints and the adapter stay ordinary peft files
            # FSDP's own recompute avoids the extra all-gather of the Trainer's generic one.
            "activation_checkpointing": activation_checkpointing,
            # QLoRA: load the 4-bit weights once on rank 0 and broadcast them, instead of once per rank.
            "cpu_ram_efficient_loading": quantized,
        }
    elif cfg.strategy.startswith("deepspeed"):
        options["deepspeed"] = deepspeed_config(3 if cfg.strategy == "deepspeed_zero3" else 2, quantized)
    return options


def deepspeed_config(stage: int, quantized: bool = False) -> dict[str, Any]:
    """A ZeRO config whose sizes and precisions are filled in by the Trainer ("auto")."""
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                # Gather whole weights when saving, so the adapter file is complete, not a shard.
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    config: dict[str, Any] = {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
    }
    if quantized and stage == 3:
        # 4-bit weights cannot be built already partitioned; load them whole, then let ZeRO-3 shard.
        config["zero3_init_flag"] = False
    return config


def world_size() -> int:
    """How many processes train together (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 of the whole run (True when not distributed): the only rank that writes run files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def same_on_all_ranks(value: Any) -> Any:
    """Rank 0's value on every rank, so all ranks resume from one checkpoint even if their views differ."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    if box[0] != value:
        log.warning("rank %d chose %s, rank 0 chose %s: using rank 0's", dist.get_rank(), value, box[0])
    return box[0]


def _over_ranks(counts: tuple[int, ...], op: str) -> tuple[int, ...]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return counts
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.tensor(counts, dtype=torch.int64, device=device)
    dist.all_reduce(total, op=getattr(dist.ReduceOp, op))
    return tuple(int(x) for x in total.tolist())


def sum_over_ranks(*counts: int) -> tuple[int, ...]:
    """Add integer counters over all ranks (each rank counted only the tokens it trained on)."""
    return _over_ranks(counts, "SUM")


def max_over_ranks(value: int) -> int:
    """The largest ``value`` of any rank, on every rank (e.g. a signal that reached some ranks first)."""
    return _over_ranks((value,), "MAX")[0]


def quiet_other_ranks() -> None:
    """Log from rank 0 only; N copies of every line hide the one that matters."""
    if not is_main_process():
        logging.getLogger("lorakit").setLevel(logging.WARNING)
