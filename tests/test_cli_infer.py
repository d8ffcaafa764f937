"""generate, chat and serve as a user runs them: a real subprocess per command, on a tiny run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.infer.runs import make_tiny_run, save_random_adapter

# One torch thread in the children: tiny models on a busy 2-core machine run faster that way.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def lorakit(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorakit", *args], input=stdin, capture_output=True, text=True,
                          timeout=300, env=ENV)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli-infer")
    run_dir, base_dir = make_tiny_run(root)
    return run_dir, save_random_adapter(base_dir, root / "extra", seed=2)


@pytest.mark.slow
def test_generate_over_a_csv_with_sampling_options(run, tmp_path):
    run_dir, _ = run
    prompts = tmp_path / "p.csv"
    prompts.write_text('prompt\nWhat is two plus two?\nSay the city of Maria.\nHi\n', encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    result = lorakit("generate", str(run_dir), "--file", str(prompts), "--out", str(out), "--max-new-tokens", "6",
                     "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--min-p", "0.05",
                     "--repetition-penalty", "1.2", "--seed", "3", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["messages"][-1]["content"] for r in rows] == ["What is two plus two?", "Say the city of Maria.", "Hi"]
    assert all(0 < r["new_tokens"] <= 6 and r["finish_reason"] in ("stop", "length") for r in rows)
    assert rows[2]["source"].endswith("p.csv, line 4")
    assert "tokens/s" in result.stderr and "3 answers" in result.stderr
    again = lorakit("generate", str(run_dir), "--file", str(prompts), "--out", str(tmp_path / "again.jsonl"),
                    "--max-new-tokens", "6", "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9",
                    "--min-p", "0.05", "--repetition-penalty", "1.2", "--seed", "3", "--batch-size", "2")
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["answer"] for line in (tmp_path / "again.jsonl").read_text().splitlines()] == [
        r["answer"] for r in rows
    ]  # the same seed samples the same answers


@pytest.mark.slow
def test_generate_names_the_prompt_that_does_not_fit(run, tmp_path):
    run_dir, _ = run
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Hi"}\n{"prompt": "' + "the quick brown fox " * 10 + '"}\n', encoding="utf-8")
    result = lorakit("generate", str(run_dir), "--file", str(prompts), "--context-length", "40",
                     "--max-new-tokens", "8")
    assert result.returncode == 2
    assert "p.jsonl, line 2" in result.stderr and "40-token context" in result.stderr
    assert "line 1" not in result.stderr


@pytest.mark.slow
def test_chat_with_system_file_stats_and_adapters(run, tmp_path):
    run_dir, extra = run
    system = tmp_path / "system.txt"
    system.write_text("Be brief.\n", encoding="utf-8")
    result = lorakit("chat", str(run_dir), "--adapter", f"extra={extra}", "--system-file", str(system), "--stats",
                     "--max-new-tokens", "4", stdin="hello\n/adapter extra\nhello again\n/exit\n")
    assert result.returncode == 0, result.stderr
    assert "models: base, run, extra" in result.stdout
    assert "(now talking to extra" in result.stdout
    assert result.stdout.count("tokens/s") == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_serve_answers_on_loopback_with_an_api_key(run):
    run_dir, extra = run
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "lorakit", "serve", str(run_dir), "--adapter", f"extra={extra}", "--port", str(port),
         "--max-new-tokens", "4"],
        env={**ENV, "LORAKIT_API_KEY": "k"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.5)
        key = {"Authorization": "Bearer k"}
        assert [m["id"] for m in httpx.get(f"{url}/v1/models", headers=key).json()["data"]] == ["base", "run", "extra"]
        assert httpx.get(f"{url}/v1/models").status_code == 401
        body = httpx.post(f"{url}/v1/chat/completions", headers=key, timeout=60,
                          json={"model": "extra", "messages": [{"role": "user", "content": "hi"}]}).json()
        assert body["usage"]["completion_tokens"] <= 4
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
