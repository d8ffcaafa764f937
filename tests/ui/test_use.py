"""The data preview and chat on tiny models: the doctor's findings, the loss-carrying text, generate's answer."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from lorakit.cli import app as cli
from tests.conftest import make_tiny_model_dir, write_jsonl
from tests.infer.runs import make_tiny_run


def test_the_preview_shows_the_doctors_findings_and_the_trained_text(client, folders):
    runs, data = folders
    model = make_tiny_model_dir(data / "model")
    rows = [{"prompt": f"Say {w}.", "completion": f"{w} {w}"} for w in ("red", "blue", "green")]
    write_jsonl(data / "train.jsonl", rows + [rows[0]])  # a duplicate: something for the doctor to find
    form = {"name": "p", "values": {"model.name": str(model), "data.train": str(data / "train.jsonl")},
            "extra": "data.cache_dir=null\ndata.shuffle=false"}
    result = client.post("/api/preview", json=form).json()
    codes = [f["code"] for report in result["reports"] for f in report["findings"]]
    assert any("duplicate" in c for c in codes), codes
    assert len(result["samples"]) == 3
    for sample, row in zip(result["samples"], rows):
        trained = "".join(s["text"] for s in sample["segments"] if s["trained"])
        untrained = "".join(s["text"] for s in sample["segments"] if not s["trained"])
        assert trained.startswith(row["completion"])  # the answer (and its end-of-turn token) carries loss
        assert row["prompt"] in untrained and row["completion"] not in untrained
    assert not (runs / ".ui" / "p").exists() and not (runs / "p").exists()  # a preview writes nothing


def test_chat_answers_as_lorakit_generate_does(client, folders):
    runs, _ = folders
    run, _ = make_tiny_run(runs)
    lines = client.post(f"/api/runs/{run.name}/chat", json={"prompt": "Hello there", "max_new_tokens": 8,
                                                            "base": True}).text.splitlines()
    events = [json.loads(line) for line in lines]
    asked = {e["side"]: e for e in events if e.get("done")}
    for side in ("tuned", "base"):  # the pieces, as they came, make up the whole answer
        assert "".join(e["piece"] for e in events if e["side"] == side and "piece" in e) == asked[side]["text"]
    assert [e["side"] for e in events if e.get("done")] == ["tuned", "base"]
    printed = CliRunner().invoke(cli, ["generate", str(run), "--prompt", "Hello there", "--max-new-tokens", "8",
                                       "--no-progress"])
    assert printed.exit_code == 0, printed.output
    assert asked["tuned"]["text"] == printed.stdout.rstrip("\n")
    base = CliRunner().invoke(cli, ["generate", str(run), "--prompt", "Hello there", "--max-new-tokens", "8",
                                    "--no-progress", "--base"])
    assert asked["base"]["text"] == base.stdout.rstrip("\n")


def answers(client, run, **form) -> dict[str, dict]:
    lines = client.post(f"/api/runs/{run.name}/chat", json={"max_new_tokens": 8, **form}).text.splitlines()
    return {e["side"]: e for e in map(json.loads, lines) if e.get("done")}


def test_the_second_answer_of_a_conversation_is_generates_for_the_same_messages(client, folders, tmp_path):
    runs, _ = folders
    run, _ = make_tiny_run(runs)
    first = answers(client, run, messages=[{"role": "user", "content": "Hello there"}])["tuned"]["text"]
    # What the page sends next: the conversation so far, its answer as the assistant's turn, and a new question.
    messages = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": first},
                {"role": "user", "content": "And then what?"}]
    second = answers(client, run, messages=messages, base=True)
    assert second["tuned"]["dropped"] == 0
    conversation = write_jsonl(tmp_path / "conversation.jsonl", [{"messages": messages}])
    for side, flags in (("tuned", []), ("base", ["--base"])):
        printed = CliRunner().invoke(cli, ["generate", str(run), "--file", str(conversation), "--max-new-tokens", "8",
                                           "--no-progress", *flags])
        assert printed.exit_code == 0, printed.output
        assert second[side]["text"] == printed.stdout.rstrip("\n")


def test_a_conversation_longer_than_the_context_loses_its_oldest_turns_as_lorakit_chat_does(client, folders, tmp_path):
    runs, _ = folders
    run, _ = make_tiny_run(runs)
    long = " ".join(["hello there"] * 60)  # a few such turns overflow the tiny model's 512-token context
    messages = [{"role": role, "content": f"{i} {long}"} for i in range(6) for role in ("user", "assistant")]
    messages.append({"role": "user", "content": "Last?"})
    answer = answers(client, run, messages=messages)["tuned"]
    assert answer["dropped"] > 0 and answer["dropped"] % 2 == 0  # a question goes with its answer
    kept = write_jsonl(tmp_path / "kept.jsonl", [{"messages": messages[answer["dropped"]:]}])
    printed = CliRunner().invoke(cli, ["generate", str(run), "--file", str(kept), "--max-new-tokens", "8",
                                       "--no-progress"])
    assert printed.exit_code == 0, printed.output
    assert answer["text"] == printed.stdout.rstrip("\n")
    too_long = [{"role": "user", "content": " ".join(["hello there"] * 400)}]
    response = client.post(f"/api/runs/{run.name}/chat", json={"messages": too_long})
    assert response.status_code == 400 and "exceed the 512-token context" in response.json()["error"]


def test_a_conversation_must_end_with_the_users_turn(client, folders):
    runs, _ = folders
    run, _ = make_tiny_run(runs)
    for messages in ([], [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                     [{"role": "user", "content": "  "}]):
        response = client.post(f"/api/runs/{run.name}/chat", json={"messages": messages})
        assert response.status_code == 400 and "user turn" in response.json()["error"], messages
    response = client.post(f"/api/runs/{run.name}/chat", json={"messages": [{"role": "tool", "content": "x"}]})
    assert response.status_code == 422  # not a role a chat turn has


def test_chat_needs_a_saved_adapter(client, folders):
    runs, _ = folders
    (runs / "empty").mkdir()
    (runs / "empty" / "lorakit.yaml").write_text("name: empty\n")
    response = client.post("/api/runs/empty/chat", json={"prompt": "hi"})
    assert response.status_code == 400 and "adapter" in response.json()["error"]


def test_a_refused_setting_in_the_preview_is_one_error_line_not_a_crash(client, folders):
    _, data = folders
    write_jsonl(data / "train.jsonl", [{"prompt": "q", "completion": "a"}])
    response = client.post("/api/preview", json={"name": "p", "values": {"data.train": str(data / "train.jsonl"),
                                                                         "lora.rank": "many"}})
    assert response.status_code == 400
    assert "lora.rank" in response.json()["error"]
