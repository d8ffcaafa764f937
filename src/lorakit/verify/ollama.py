"""Ollama's template renders training's prompt: the Modelfile's TEMPLATE run by Go's ``text/template``.

Ollama renders prompts with Go's template package, so the judge is Go itself (where it is installed;
the row is skipped with the reason where not). Each held-out conversation is rendered, and also one
with a system turn added and one of several turns, because a template that drops a system turn or
an earlier answer still renders single questions right. The rendered text, tokenized as ollama's
llama.cpp does (BOS added where the GGUF adds one), must give training's ids.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from lorakit.errors import LorakitError
from lorakit.export.modelfile import modelfile_path, write_modelfile
from lorakit.templates import Conversation, adds_bos
from lorakit.verify.report import FAIL, PASS, SKIP, Check, first_mismatch, token_text
from lorakit.verify.subject import Subject, training_ids

GO_RENDERER = """package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct{ Role, Content string }

func main() {
	text, _ := os.ReadFile(os.Args[1])
	raw, _ := os.ReadFile(os.Args[2])
	var conversations [][]Message
	if err := json.Unmarshal(raw, &conversations); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("t").Parse(string(text)))
	var out []string
	for _, c := range conversations {
		var b strings.Builder
		if err := tmpl.Execute(&b, map[string]any{"Messages": c}); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""
SYSTEM_TURN = {"role": "system", "content": "You are checked by lorakit verify. Answer as trained."}


class GoRenderError(LorakitError, RuntimeError):
    """Go could not build the renderer or run the template; the message holds its error."""


def modelfile_template(path: Path) -> str:
    """The TEMPLATE of a Modelfile lorakit wrote (triple-quoted); empty when it has none."""
    text = path.read_text(encoding="utf-8")
    if 'TEMPLATE """' not in text:
        return ""
    return text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]


def go_render(template: str, conversations: list[Conversation], folder: Path) -> list[str]:
    """Each conversation rendered by Go's text/template with ``template``, as ollama renders .Messages."""
    program, binary = folder / "render.go", folder / "render"
    program.write_text(GO_RENDERER, encoding="utf-8")
    (folder / "template.txt").write_text(template, encoding="utf-8")
    (folder / "conversations.json").write_text(json.dumps(conversations), encoding="utf-8")
    env = dict(os.environ)
    if not any(env.get(k) for k in ("GOCACHE", "XDG_CACHE_HOME", "HOME")):
        env["GOCACHE"] = str(folder / "gocache")  # go build needs a cache; a bare environment names none
    try:
        if not binary.exists():
            subprocess.run(["go", "build", "-o", str(binary), str(program)], check=True, cwd=folder, env=env,
                           capture_output=True, text=True, timeout=600)
        done = subprocess.run([str(binary), str(folder / "template.txt"), str(folder / "conversations.json")],
                              capture_output=True, text=True, check=True, timeout=120)
    except subprocess.CalledProcessError as e:
        raise GoRenderError(f"Go could not render the Modelfile's template: {e.stderr.strip()[-400:]}") from None
    return json.loads(done.stdout)


def conversations(subject: Subject) -> list[tuple[str, Conversation]]:
    """(where, conversation ending with its answer): each held-out one, one with a system turn, one of several turns."""
    samples = subject.held.samples
    out = [(s.origin, s.conversation) for s in samples]
    first = samples[0].conversation
    if first[0]["role"] != "system":
        out.append((f"{samples[0].origin} + a system turn", [SYSTEM_TURN, *first]))
    if len(samples) > 1:
        later = [m for m in samples[1].conversation if m["role"] != "system"]
        out.append((f"{samples[0].origin} then {samples[1].origin}", [*first, *later]))
    return out


def _usable(subject: Subject, cases: list[tuple[str, Conversation]]) -> list[tuple[str, Conversation, list[int]]]:
    """Cases with training's prompt ids; a variant the training template refuses (no system role) is left out."""
    kept = []
    for where, conversation in cases:
        try:
            kept.append((where, conversation, training_ids(subject.training, conversation)[0]))
        except LorakitError:
            continue
    return kept


def check_ollama(subject: Subject, gguf: Path | None) -> Check:
    """The Modelfile beside ``gguf``; with none, the one ``export gguf`` would write for this run."""
    name = f"ollama {modelfile_path(gguf).name}" if gguf is not None else "ollama template"
    if shutil.which("go") is None:
        return Check(name, SKIP, "Go is not installed (apt-get install golang-go): ollama's text/template cannot run")
    tokenizer = subject.session.tokenizer
    with tempfile.TemporaryDirectory(prefix="lorakit-verify-") as tmp:
        folder = Path(tmp)
        modelfile = modelfile_path(gguf) if gguf is not None else write_modelfile(
            folder / "run.gguf", tokenizer, subject.cfg.data.system_prompt)
        if not modelfile.is_file():
            return Check(name, SKIP, f"no Modelfile beside {gguf}")
        template = modelfile_template(modelfile)
        if not template:
            return Check(name, FAIL, f"{modelfile} has no TEMPLATE: ollama would fall back to the GGUF's own")
        cases = _usable(subject, conversations(subject))
        rendered = go_render(template, [c[:-1] for _, c, _ in cases], folder)
    # ollama tokenizes the rendered text and puts a BOS before it where the GGUF says add_bos_token
    lead = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
    text_of = token_text(subject.training.tokenizer)
    differ, first, extra_bos = 0, None, 0
    for (where, _, want), text in zip(cases, rendered):
        got = lead + tokenizer(text, add_special_tokens=False)["input_ids"]
        found = first_mismatch(want, got, text_of, f"{where} (ollama template)")
        differ += found is not None
        extra_bos += got == [tokenizer.bos_token_id, *want]
        first = first or found
    if first is not None:
        why = ("; the only difference is a second BOS: ollama puts one before the prompt (the GGUF says "
               "add_bos_token) and the TEMPLATE writes another") if extra_bos == differ else ""
        return Check(name, FAIL, f"{differ} of {len(cases)} conversations rendered by the Modelfile's TEMPLATE (Go) "
                     f"differ from training's ids{why}; {first.lines()[0]}", mismatch=first)
    return Check(name, PASS, f"Go renders all {len(cases)} conversations (system turn and several turns included) "
                 "to training's ids")
