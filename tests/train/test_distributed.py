"""Several processes train like one: same losses and adapter, rank-0 files, shared resume, fast failure.

The multi-process runs are real: ``lorakit train --nproc 2`` relaunches itself through
torchrun with two gloo workers on this CPU, exactly as a user runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lorakit.config import ConfigError
from lorakit.config.train import DistributedConfig
from lorakit.config_file import load_config
from lorakit.train import distributed
from lorakit.train.trainer import training_arguments
from tests.train.helpers import LOSS_RTOL as PRECISION_LOSS_RTOL
from tests.train.helpers import adapter, assert_same_update, metrics, run_on_one_thread, tiny_config

# One thread per worker: two workers share this 2-core machine, and the in-process
# reference must split its matmuls the same way.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STEPS = 6
# 16 samples, 2 workers x batch 2 = 4 samples a step, 4 steps an epoch: the count divides
# evenly, so accelerate never pads the last batch with repeated samples.
# Precision is pinned: 'auto' would be bf16 on a CPU with AMX, and these tolerances are float32's
# (the bf16 twin below has its own).
SHARED = ("train.max_steps=6", "train.save_steps=3", "train.save_total_limit=3", "train.logging_steps=1",
          "train.learning_rate=0.005", "lora.dropout=0", "train.precision=fp32")
# Losses agree to float32 rounding (allreduce sums two half-batch gradients in another
# order than one full batch). Adam divides by sqrt(v), which magnifies those last-bit
# differences in the first steps, so the adapter is compared at 1e-4 absolute (weights ~0.2).
LOSS_RTOL = 1e-5
ADAPTER_ATOL = 1e-4


def lorakit_train(config: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorakit", "train", str(config), *args],
                          capture_output=True, text=True, timeout=timeout, env=CHILD_ENV)


def write_config(path: Path, model_dir: Path, data: Path, out: Path, *settings: str) -> Path:
    """A YAML file from ``key.sub=value`` settings (what a user would write by hand)."""
    tree: dict = {"model": {"name": str(model_dir)}, "data": {"train": str(data)}, "output_dir": str(out)}
    for setting in settings:
        key, value = setting.split("=", 1)
        section, name = key.split(".")
        tree.setdefault(section, {})[name] = json.loads(value) if value[0].isdigit() else value
    tree["train"]["progress_bar"] = False
    path.write_text(json.dumps(tree), encoding="utf-8")  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """One 2-process run (batch 2 each), shared by the tests that look at its results."""
    from tests.conftest import make_tiny_model_dir

    tmp = tmp_path_factory.mktemp("ddp")
    model_dir = make_tiny_model_dir(tmp / "model")
    cfg = tiny_config(model_dir, tmp, *SHARED)  # writes tmp/train.jsonl (16 samples)
    config = write_config(tmp / "ddp.yaml", model_dir, cfg.data.train[0], tmp / "run2", *SHARED, "train.batch_size=2")
    result = lorakit_train(config, "--nproc", "2")
    assert result.returncode == 0, result.stderr[-4000:]
    return tmp, config, tmp / "run2"


@pytest.mark.slow
def test_two_processes_match_one_process_with_twice_the_batch(two_process_run):
    tmp, _, run2 = two_process_run
    model_dir = tmp / "model"
    # The same 16 samples, one process, batch 4. Both runs draw one seeded permutation of the
    # samples; accelerate hands each of the 2 workers alternate batches of 2 from it, so
    # optimizer step k sees samples [4k, 4k+4) of that permutation in both runs, and with
    # token-weighted loss over all ranks the update is the same one.
    cfg = tiny_config(model_dir, tmp / "single", *SHARED, "train.batch_size=4", "train.progress_bar=false")
    run_on_one_thread(cfg)
    one, two = metrics(cfg.output_dir), metrics(run2)
    one_loss = [(r["step"], r["loss"], r["loss_tokens_seen"]) for r in one if "loss" in r]
    two_loss = [(r["step"], r["loss"], r["loss_tokens_seen"]) for r in two if "loss" in r]
    assert [s for s, _, _ in two_loss] == list(range(1, STEPS + 1))  # rank 0 alone wrote: no line twice
    assert [(s, n) for s, _, n in two_loss] == [(s, n) for s, _, n in one_loss]  # tokens summed over ranks
    torch.testing.assert_close(torch.tensor([x for _, x, _ in two_loss]), torch.tensor([x for _, x, _ in one_loss]),
                               rtol=LOSS_RTOL, atol=0)
    got, expected = adapter(run2), adapter(cfg.output_dir)
    assert got.keys() == expected.keys()
    for key in got:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=ADAPTER_ATOL, msg=key)
    summary = json.loads((run2 / "summary.json").read_text())
    assert summary["tokens_seen"] == json.loads((cfg.output_dir / "summary.json").read_text())["tokens_seen"]
    # Each rank's RNG state is inside the checkpoint before the completion marker is.
    for step in (3, 6):
        names = {p.name for p in (run2 / "checkpoints" / f"checkpoint-{step}").iterdir()}
        assert {"rng_state_0.pth", "rng_state_1.pth", "lorakit-complete.json"} <= names


@pytest.mark.slow
def test_two_processes_match_one_process_in_bf16(tmp_path):
    """The bf16 twin of the test above: autocast on both sides, bf16's tolerances (helpers.py)."""
    from tests.conftest import make_tiny_model_dir

    settings = ("train.max_steps=3", "train.save_steps=100", "train.logging_steps=1", "train.learning_rate=0.005",
                "lora.dropout=0", "train.precision=bf16")
    model_dir = make_tiny_model_dir(tmp_path / "model")
    cfg = tiny_config(model_dir, tmp_path, *settings, "train.batch_size=4")
    config = write_config(tmp_path / "ddp.yaml", model_dir, cfg.data.train[0], tmp_path / "run2", *settings,
                          "train.batch_size=2")
    result = lorakit_train(config, "--nproc", "2")
    assert result.returncode == 0, result.stderr[-4000:]
    run_on_one_thread(cfg)
    one = [r["loss"] for r in metrics(cfg.output_dir) if "loss" in r]
    two = [r["loss"] for r in metrics(tmp_path / "run2") if "loss" in r]
    assert json.loads((tmp_path / "run2" / "summary.json").read_text())["precision"] == "bf16"
    assert len(one) == len(two) == 3
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=PRECISION_LOSS_RTOL["bf16"], atol=0)
    assert_same_update(adapter(tmp_path / "run2"), adapter(cfg.output_dir), "bf16")


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_two_processes(two_process_run, tmp_path):
    _, config, run2 = two_process_run
    out = tmp_path / "resumed"
    result = lorakit_train(config, "--nproc", "2", "--set", f"output_dir={out}",
                           "--resume", str(run2 / "checkpoints" / "checkpoint-3"))
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["resumed_from"].endswith("checkpoint-3")
    # Both ranks restored the weights, optimizer, RNG and data position of step 3: the rest
    # of the run repeats the uninterrupted one exactly.
    resumed = {r["step"]: r["loss"] for r in metrics(out) if "loss" in r}
    original = {r["step"]: r["loss"] for r in metrics(run2) if "loss" in r}
    assert sorted(resumed) == [4, 5, 6]
    assert all(resumed[s] == original[s] for s in resumed), (resumed, original)
    got, expected = adapter(out), adapter(run2)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
@pytest.mark.parametrize(("stop", "expected", "bound_s"), [
    # Dead: torchrun's agent sees the exit within its monitor interval and stops the other rank.
    (signal.SIGKILL, "rank 1 exited with -9", 60),
    # Hung (stopped, not dead): rank 0 waits in the gradient allreduce until
    # train.distributed.timeout_s (5 s here), fails, and the agent then kills the stopped
    # rank (SIGTERM, and SIGKILL after its 30 s grace).
    (signal.SIGSTOP, "rank 0 exited with 1", 5 + 30 + 30),
])
def test_a_dead_or_hung_rank_fails_the_whole_run_in_bounded_time(tiny_model_dir, tmp_path, stop, expected, bound_s):
    cfg = tiny_config(tiny_model_dir, tmp_path, "train.logging_steps=1")
    config = write_config(tmp_path / "long.yaml", tiny_model_dir, cfg.data.train[0], tmp_path / "run",
                          "train.max_steps=100000", "train.batch_size=2", "train.logging_steps=1",
                          "train.save_steps=100000", "lora.dropout=0")
    proc = subprocess.Popen([sys.executable, "-m", "lorakit", "train", str(config), "--nproc", "2",
                             "--set", "train.distributed.timeout_s=5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CHILD_ENV,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        log = tmp_path / "run" / "metrics.jsonl"
        while not (log.exists() and log.read_text().count("\n") >= 2):  # both ranks are stepping
            assert proc.poll() is None, proc.communicate()[1][-4000:]
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[1], stop)
        stopped = time.monotonic()
        _, stderr = proc.communicate(timeout=bound_s + 30)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers, started by this test
    assert took < bound_s, took
    assert proc.returncode == 1, stderr[-4000:]
    # the failed rank is named; the other may be listed too, when it failed first in a collective
    failure = next((line for line in stderr.splitlines() if "multi-process training failed: " in line), "")
    assert expected in failure, stderr[-4000:]
    if stop == signal.SIGSTOP:
        assert "Timed out" in stderr or "timed out" in stderr, stderr[-4000:]  # rank 0's own error is shown
    for pid in workers:  # no worker left behind
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert not (tmp_path / "run" / "summary.json").exists()


# --- strategies and refusals (no processes started)

def test_strategies_map_onto_trainer_options(tmp_path):
    ddp = distributed.trainer_options(DistributedConfig(timeout_s=42), on_gpu=False, activation_checkpointing=False)
    assert ddp == {"ddp_backend": None, "ddp_timeout": 42, "ddp_find_unused_parameters": False}
    fsdp = distributed.trainer_options(DistributedConfig(strategy="fsdp"), True, activation_checkpointing=True)
    assert fsdp["fsdp"] is True and fsdp["fsdp_config"]["activation_checkpointing"] is True
    assert fsdp["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"
    assert distributed.trainer_options(DistributedConfig(strategy="fsdp"), True, False, quantized=True)[
        "fsdp_config"]["cpu_ram_efficient_loading"] is True
    zero2 = distributed.trainer_options(DistributedConfig(strategy="deepspeed_zero2"), True, False)["deepspeed"]
    zero3 = distributed.trainer_options(DistributedConfig(strategy="deepspeed_zero3"), True, False, quantized=True)[
        "deepspeed"]
    assert zero2["zero_optimization"]["stage"] == 2 and "stage3_gather_16bit_weights_on_model_save" not in zero2[
        "zero_optimization"]
    assert zero3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero3["zero3_init_flag"] is False
    # The ddp defaults reach the Trainer in a plain single-process run.
    cfg = load_config(None, ["train.distributed.timeout_s=42"])
    args = training_arguments(cfg.train, tmp_path, 0, "fp32", on_gpu=False, has_eval=False)
    assert args.ddp_timeout == 42 and args.ddp_find_unused_parameters is False and not args.fsdp


@pytest.mark.parametrize(("settings", "message"), [
    (["train.distributed.strategy=fsdp"], "train.selective_loss is not supported with distributed.strategy=fsdp"),
    (["train.distributed.strategy=deepspeed_zero3"], "set train.selective_loss=false"),
    (["train.distributed.strategy=deepspeed_zero2", "train.on_nonfinite=skip"], "on_nonfinite=skip is not supported"),
    (["train.distributed.strategy=fsdp", "train.selective_loss=false", "train.optimizer=adamw_8bit"],
     "use adamw, adafactor or sgd"),
    (["train.distributed.strategy=zero9"], "train.distributed.strategy"),
])
def test_unsupported_combinations_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, settings)


@pytest.mark.slow
def test_deepspeed_is_refused_on_cpu_before_launch(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="needs CUDA GPUs; on CPU use strategy ddp or fsdp"):
        distributed.check_supported(DistributedConfig(strategy="deepspeed_zero2"), on_gpu=False)
    distributed.check_supported(DistributedConfig(strategy="fsdp"), on_gpu=False)  # FSDP2 runs on gloo
    cfg = tiny_config(tiny_model_dir, tmp_path)
    config = write_config(tmp_path / "fsdp.yaml", tiny_model_dir, cfg.data.train[0], tmp_path / "run",
                          "train.max_steps=1")
    result = subprocess.run([sys.executable, "-m", "lorakit", "train", str(config), "--nproc", "2",
                             "--set", "train.distributed.strategy=deepspeed_zero3", "--set", "train.selective_loss=false"],
                            capture_output=True, text=True, timeout=120, env=CHILD_ENV)
    assert result.returncode == 2 and "needs CUDA GPUs" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # refused in the launcher, before any worker started


# --- GPU paths: run on a machine with at least two GPUs

def _gpu_run(tmp_path: Path, strategy: str) -> dict:
    from tests.conftest import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path / "model")
    cfg = tiny_config(model_dir, tmp_path, *SHARED)
    extra = ["train.selective_loss=false"] if strategy in ("fsdp", "deepspeed_zero3") else []
    config = write_config(tmp_path / "gpu.yaml", model_dir, cfg.data.train[0], tmp_path / "run", *SHARED,
                          "train.batch_size=2", *extra)
    tree = json.loads(config.read_text())
    tree["train"]["distributed"] = {"strategy": strategy}
    config.write_text(json.dumps(tree), encoding="utf-8")
    result = lorakit_train(config, "--nproc", "2", timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((tmp_path / "run" / "summary.json").read_text())


needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


@pytest.mark.gpu
@needs_two_gpus
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_strategy_trains_on_two_gpus(tmp_path, strategy):
    if strategy.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason="DeepSpeed not installed: pip install 'lorakit[deepspeed]'")
    summary = _gpu_run(tmp_path, strategy)
    assert summary["steps"] == STEPS and summary["train_loss"] < 10
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
    assert set(adapter(tmp_path / "run")) == set(adapter(tmp_path / "run" / "checkpoints" / "checkpoint-6"))


# --- two nodes on one machine: the README's two-machine command, as two torchrun launches

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_nodes(config: Path, *args: str) -> list[subprocess.Popen]:
    """Two torchrun launches of one worker each, meeting at a c10d rendezvous on 127.0.0.1, as
    the README tells two machines to start.

    On two machines only the first one is HOST, so its agent holds the rendezvous store; here
    both are, and whichever started first would hold it, so ``is_host`` says it is node 0's
    (otherwise node 1's end would take the store with it and node 0 would report the store lost).
    """
    endpoint, rdzv_id = f"127.0.0.1:{_free_port()}", f"lorakit-test-{os.getpid()}-{time.monotonic_ns()}"
    return [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
                              "--nproc-per-node", "1", "--max-restarts", "0", "--rdzv-backend", "c10d",
                              "--rdzv-endpoint", endpoint, "--rdzv-id", rdzv_id,
                              "--rdzv-conf", f"is_host={int(node == 0)}",
                              "-m", "lorakit", "train", str(config), *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CHILD_ENV,
                             start_new_session=True)
            for node in (0, 1)]


def _finish(nodes: list[subprocess.Popen], timeout: float) -> list[str]:
    """Each node's stderr once it has exited (any node left over is killed, with its worker)."""
    try:
        return [node.communicate(timeout=timeout)[1] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)


@pytest.mark.slow
def test_two_nodes_train_the_same_run_as_one_launch_of_two_processes(two_process_run, tmp_path):
    _, config, run2 = two_process_run
    out = tmp_path / "nodes"
    nodes = _start_nodes(config, "--set", f"output_dir={out}")
    errors = _finish(nodes, timeout=300)
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(e[-3000:] for e in errors)
    # Global rank 0 (node 0's worker) alone wrote the run files, though node 1 sees the same folder.
    two, nodes_run = metrics(run2), metrics(out)
    assert [r["step"] for r in nodes_run if "loss" in r] == list(range(1, STEPS + 1))
    # The same ranks, batches and allreduce as one launch: the same numbers, not merely close ones.
    assert [(r["loss"], r["loss_tokens_seen"]) for r in nodes_run if "loss" in r] == [
        (r["loss"], r["loss_tokens_seen"]) for r in two if "loss" in r]
    got, expected = adapter(out), adapter(run2)
    assert got.keys() == expected.keys()
    for key in got:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=ADAPTER_ATOL, msg=key)
    for step in (3, 6):  # node 1's rank wrote its RNG state into rank 0's checkpoint before it was marked
        names = {p.name for p in (out / "checkpoints" / f"checkpoint-{step}").iterdir()}
        assert {"rng_state_0.pth", "rng_state_1.pth", "lorakit-complete.json"} <= names


@pytest.mark.slow
def test_killing_one_nodes_worker_stops_the_other_node_and_the_run_resumes(two_process_run, tmp_path):
    _, config, run2 = two_process_run
    out = tmp_path / "nodes"
    settings = ("--set", f"output_dir={out}", "--set", "train.distributed.timeout_s=5")
    nodes = _start_nodes(config, *settings)
    marker = out / "checkpoints" / "checkpoint-3" / "lorakit-complete.json"
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert all(node.poll() is None for node in nodes), "a node exited before checkpoint-3"
            assert time.monotonic() < deadline, "checkpoint-3 never completed"
            time.sleep(0.01)
        (worker,) = _children(nodes[1].pid)
        os.kill(worker, signal.SIGSTOP)  # hold node 1 at once, so the run cannot reach its last step
        assert not (out / "checkpoints" / "checkpoint-6").exists()
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        nodes[0].wait(timeout=5 + 30 + 30)
        took = time.monotonic() - killed
    finally:
        errors = _finish(nodes, timeout=60)
    # Node 0's worker fails in the next collective (at once, or after timeout_s=5) and its
    # agent stops; torchrun's report on each node names the global rank that failed there.
    assert took < 5 + 30 + 30, took
    assert nodes[0].returncode != 0 and nodes[1].returncode != 0
    assert "rank      : 1" in errors[1] and "exitcode  : -9" in errors[1], errors[1][-3000:]
    assert "rank      : 0" in errors[0], errors[0][-3000:]
    assert not (out / "summary.json").exists()
    # Both nodes again, --resume alone: every rank takes checkpoint-3 (the last complete one) and the
    # run ends where the uninterrupted one did.
    nodes = _start_nodes(config, *settings, "--resume", "latest")
    errors = _finish(nodes, timeout=300)
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(e[-3000:] for e in errors)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["resumed_from"].endswith("checkpoint-3")
    resumed = {r["step"]: r["loss"] for r in metrics(out) if "loss" in r}
    original = {r["step"]: r["loss"] for r in metrics(run2) if "loss" in r}
    assert sorted(resumed) == list(range(1, STEPS + 1)) and resumed == original
    got, expected = adapter(out), adapter(run2)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=ADAPTER_ATOL, msg=key)


# --- SIGTERM under --nproc: every rank stops at one step, saves, and the run resumes exactly

@pytest.mark.slow
@pytest.mark.parametrize("target", [
    # torchrun's agent turns SIGTERM into SignalException, passes the signal to every worker and
    # waits 30 s for them; lorakit's launcher then says how to resume.
    "launcher",
    # One worker alone (a scheduler that signals the process it started): the ranks agree on the
    # signal at the next step's end, so both stop there, and both exit 143.
    "worker",
])
def test_sigterm_under_nproc_stops_every_rank_at_a_checkpoint_that_resumes_exactly(two_process_run, tmp_path, target):
    _, config, run2 = two_process_run
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "lorakit", "train", str(config), "--nproc", "2",
                             "--set", f"output_dir={out}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CHILD_ENV,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        log = out / "metrics.jsonl"
        while not (log.exists() and log.read_text().count("\n") >= 1):  # step 1 is done
            assert proc.poll() is None, proc.communicate()[1][-4000:]
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.01)
        workers = _children(proc.pid)
        os.kill(proc.pid if target == "launcher" else workers[1], signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-4000:]
    last = stderr.strip().splitlines()[-1]
    assert "SIGTERM: every rank stopped" in last and "--nproc 2 --resume" in last, stderr[-4000:]
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert not (out / "summary.json").exists()
    # One checkpoint, at the step both ranks stopped at, complete with both ranks' RNG states.
    (stopped,) = (out / "checkpoints").iterdir()
    step = int(stopped.name.split("-")[1])
    assert 1 <= step < STEPS, step
    assert {"rng_state_0.pth", "rng_state_1.pth", "lorakit-complete.json"} <= {p.name for p in stopped.iterdir()}
    result = lorakit_train(config, "--nproc", "2", "--set", f"output_dir={out}", "--resume")
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((out / "summary.json").read_text())["resumed_from"].endswith(stopped.name)
    resumed = {r["step"]: r["loss"] for r in metrics(out) if "loss" in r}
    original = {r["step"]: r["loss"] for r in metrics(run2) if "loss" in r}
    assert resumed == original
    got, expected = adapter(out), adapter(run2)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=ADAPTER_ATOL, msg=key)


# --- FSDP2 on CPU with gloo: the Trainer's fsdp path, made to shard on CPU (distributed.fsdp_on_cpu)

@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_trains_and_resumes_as_ddp_does(two_process_run, tmp_path):
    """fsdp shards each LoRA and base weight across the two ranks (fully_shard, one unit per decoder
    layer) and gathers them for every checkpoint; the update is the DDP run's, which equals one process
    with twice the batch (the first test here). selective_loss is off under fsdp (refused with it)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tmp, config, run2 = two_process_run
    fsdp = ("--set", "train.distributed.strategy=fsdp", "--set", "train.selective_loss=false")
    out = tmp_path / "fsdp"
    result = lorakit_train(config, "--nproc", "2", *fsdp, "--set", f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-4000:]
    sharded, ddp = metrics(out), metrics(run2)
    assert [r["step"] for r in sharded if "loss" in r] == list(range(1, STEPS + 1))
    torch.testing.assert_close(torch.tensor([r["loss"] for r in sharded if "loss" in r]),
                               torch.tensor([r["loss"] for r in ddp if "loss" in r]), rtol=LOSS_RTOL, atol=0)
    got, expected = adapter(out), adapter(run2)
    assert got.keys() == expected.keys()
    for key in got:  # whole weights, not a rank's shard
        assert got[key].shape == expected[key].shape, key
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=ADAPTER_ATOL, msg=key)
    # Checkpoints are ordinary peft adapters: plain peft loads one on the base. That they were written
    # by accelerate's FSDP saver (its optimizer.bin and model file, not DDP's optimizer.pt) shows the
    # run was sharded, not DDP under another name.
    checkpoint = out / "checkpoints" / "checkpoint-3"
    names = {p.name for p in checkpoint.iterdir()}
    assert {"optimizer.bin", "pytorch_model_fsdp.bin", "lorakit-complete.json"} <= names and "optimizer.pt" not in names
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp / "model"), str(checkpoint))
    # And resume under fsdp: the sharded optimizer state is loaded back, the rest of the run repeats.
    resumed = tmp_path / "resumed"
    result = lorakit_train(config, "--nproc", "2", *fsdp, "--set", f"output_dir={resumed}", "--resume", str(checkpoint))
    assert result.returncode == 0, result.stderr[-4000:]
    again = {r["step"]: r["loss"] for r in metrics(resumed) if "loss" in r}
    first = {r["step"]: r["loss"] for r in sharded if "loss" in r}
    assert sorted(again) == [4, 5, 6] and all(again[s] == first[s] for s in again), (again, first)
    got = adapter(resumed)
    for key in expected:
        torch.testing.assert_close(got[key], adapter(out)[key], rtol=0, atol=0, msg=key)


# --- GRPO under --nproc: each process samples and scores its own prompts; the step logs them all
SCORED = '''
import json
from pathlib import Path


def logged(prompts, completions, **columns):
    """A score from the completion's length, and a line per call: which process scored which prompts."""
    import os
    scores = [len(c) % 5 / 4 for c in completions]
    with open(Path(__file__).with_name("scored." + os.environ.get("RANK", "0")), "a") as f:
        f.write(json.dumps({"prompts": prompts, "scores": scores}) + "\\n")
    return scores
'''


@pytest.mark.slow
def test_grpo_in_two_processes_samples_each_prompt_once_and_logs_the_whole_step(tmp_path):
    """Two processes, 2 prompts x 3 completions each a step: the processes score disjoint prompts, the
    4 prompts of a step are 4 different rows, and the logged reward is the mean over both processes'
    12 completions (rank 0 alone writes metrics, every step once)."""
    from tests.conftest import make_tiny_model_dir, write_jsonl

    model_dir = make_tiny_model_dir(tmp_path / "model")
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Question number {i}?"} for i in range(8)])
    (tmp_path / "scores.py").write_text(SCORED, encoding="utf-8")
    tree = {"model": {"name": str(model_dir)}, "data": {"train": str(data)}, "output_dir": str(tmp_path / "run"),
            "method": "grpo", "lora": {"dropout": 0},
            "grpo": {"rewards": [f"{tmp_path / 'scores.py'}:logged"], "num_generations": 3,
                     "max_completion_length": 6},
            "train": {"max_steps": 2, "batch_size": 2, "logging_steps": 1, "save_steps": 100,
                      "progress_bar": False, "learning_rate": 0.02}}
    config = tmp_path / "grpo.yaml"
    config.write_text(json.dumps(tree), encoding="utf-8")
    result = lorakit_train(config, "--nproc", "2", timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]

    calls = {rank: [json.loads(line) for line in (tmp_path / f"scored.{rank}").read_text().splitlines()]
             for rank in (0, 1)}
    assert [len(calls[0]), len(calls[1])] == [2, 2]  # one scoring call per process and step
    logged = [r for r in metrics(tmp_path / "run") if "reward" in r]
    assert [r["step"] for r in logged] == [1, 2]
    for step, row in enumerate(logged):
        mine, theirs = calls[0][step], calls[1][step]
        assert len(mine["prompts"]) == len(theirs["prompts"]) == 6  # 2 prompts x 3 completions each
        assert not set(mine["prompts"]) & set(theirs["prompts"])  # each prompt sampled by one process
        assert len(set(mine["prompts"]) | set(theirs["prompts"])) == 4
        every = mine["scores"] + theirs["scores"]
        assert row["reward"] == pytest.approx(sum(every) / len(every), rel=1e-6)
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
