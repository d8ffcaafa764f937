"""The Ollama Modelfile: its Go template writes the prompt the Jinja template (and so training) wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from lorakit.export.modelfile import TemplateShapeError, go_template, stop_tokens, turn_pieces, write_modelfile
from tests.conftest import FAMILIES, FAMILY_FORMATS, make_tokenizer
from tests.export.spm import make_spm_tokenizer

SMOLLM_TEMPLATE = (  # SmolLM2's own template: a default system prompt when the conversation has none
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a\nb"}, {"role": "assistant", "content": "c"},
     {"role": "user", "content": 'say "{{ x }}"'}],
    [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"}, {"role": "user", "content": "three"}],
]
GO_RENDERER = """package main

import (
	"encoding/json"
	"os"
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
		var b = new(stringsBuilder)
		if err := tmpl.Execute(b, map[string]any{"Messages": c}); err != nil {
			panic(err)
		}
		out = append(out, b.s)
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

type stringsBuilder struct{ s string }

func (b *stringsBuilder) Write(p []byte) (int, error) { b.s += string(p); return len(p), nil }
"""


# Every family's chat format in the test tokenizers: the named templates and the families' own.
FORMATS = [*FAMILIES, *FAMILY_FORMATS]
# format: the end-of-turn token its Modelfile must stop at
END_TOKENS = {"chatml": "<|im_end|>", "llama-3": "<|eot_id|>", "phi-3": "<|end|>", "qwen3": "<|im_end|>",
              "phi-3-mini": "<|end|>", "zephyr": "</s>", "mistral": "</s>", "gemma": "<end_of_turn>",
              "falcon": "<|endoftext|>", "bloom": "</s>"}


def tokenizers():
    for family in FORMATS:
        yield family, make_tokenizer(family)
    smol = make_tokenizer("chatml")
    smol.chat_template = SMOLLM_TEMPLATE
    yield "smollm", smol
    # TinyLlama as transformers 5 builds it: its Modelfile's template starts with a space (gguf_vocab.SpaceRule)
    yield "zephyr-spm-first", make_spm_tokenizer("zephyr", metaspace="first")


def modelfile_template(path) -> str:
    text = path.read_text(encoding="utf-8")
    return text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]


def jinja(tokenizer, conversation) -> str:
    if not conversation:
        return ""  # what the Modelfile renders for an empty list (ollama renders one when loading a model)
    return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("family,tokenizer", list(tokenizers()), ids=lambda v: v if isinstance(v, str) else "")
def test_pieces_rebuild_the_jinja_prompt(family, tokenizer):
    pieces = turn_pieces(tokenizer, tokenizer.chat_template, strip_bos=False)
    for conversation in CONVERSATIONS:
        assert pieces.render(conversation, True) == jinja(tokenizer, conversation)
    if family == "llama-3":
        assert pieces.start == "<|begin_of_text|>"
        stripped = turn_pieces(tokenizer, tokenizer.chat_template, strip_bos=True)
        assert stripped.render(CONVERSATIONS[1], True) == jinja(tokenizer, CONVERSATIONS[1])[len("<|begin_of_text|>"):]
    if family == "smollm":
        assert "named SmolLM" in pieces.default_system
    if family == "mistral":  # its template drops system turns: so does the Go template
        assert pieces.system is None
    assert pieces.render([], True) == ""


def test_irregular_template_is_refused():
    tokenizer = make_tokenizer("chatml")
    numbered = ("{% for message in messages %}{{ loop.index|string + message['role'] + ':' + message['content'] + '\n' }}"
                "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}")
    with pytest.raises(TemplateShapeError):
        turn_pieces(tokenizer, numbered, strip_bos=False)


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain (apt-get install golang-go) to run text/template")
def test_go_template_renders_like_jinja(tmp_path):
    program = tmp_path / "render.go"
    program.write_text(GO_RENDERER, encoding="utf-8")
    binary = tmp_path / "render"
    env = {**os.environ, "GOCACHE": str(tmp_path / "gocache"), "GOPATH": str(tmp_path / "gopath"), "GOFLAGS": "-mod=mod"}
    subprocess.run(["go", "build", "-o", str(binary), str(program)], check=True, env=env, cwd=tmp_path, timeout=300)
    conversations = [*CONVERSATIONS, []]
    (tmp_path / "conversations.json").write_text(json.dumps(conversations), encoding="utf-8")
    for family, tokenizer in tokenizers():
        # the TEMPLATE the export writes, read back from the Modelfile itself
        template = tmp_path / f"{family}.tmpl"
        template.write_text(modelfile_template(write_modelfile(tmp_path / f"{family}.gguf", tokenizer)), "utf-8")
        result = subprocess.run([str(binary), str(template), str(tmp_path / "conversations.json")],
                                capture_output=True, text=True, check=True, timeout=60)
        lead = " " if family == "zephyr-spm-first" else ""
        rendered = json.loads(result.stdout)
        assert rendered == [lead + jinja(tokenizer, c) if c else "" for c in conversations], family
        # what matters to the model: the tokens, which the lead leaves as training had them
        assert [tokenizer(t, add_special_tokens=False)["input_ids"] for t in rendered] == [
            tokenizer(jinja(tokenizer, c), add_special_tokens=False)["input_ids"] for c in conversations], family


@pytest.mark.parametrize("family", FORMATS)
def test_every_family_gets_a_template_and_its_end_of_turn_stop(family, tmp_path):
    text = write_modelfile(tmp_path / f"{family}.gguf", make_tokenizer(family)).read_text()
    assert text.startswith(f"FROM ./{family}.gguf\nTEMPLATE ")
    assert f"PARAMETER stop {json.dumps(END_TOKENS[family])}" in text


def test_one_modelfile_per_gguf(tmp_path):
    tokenizer = make_tokenizer("chatml")
    f16 = write_modelfile(tmp_path / "demo-f16.gguf", tokenizer)
    q8 = write_modelfile(tmp_path / "demo-q8_0.gguf", tokenizer)
    assert (f16.name, q8.name) == ("demo-f16.Modelfile", "demo-q8_0.Modelfile")
    assert f16.read_text().startswith("FROM ./demo-f16.gguf\n") and q8.read_text().startswith("FROM ./demo-q8_0.gguf\n")
    adapter = write_modelfile(tmp_path / "base" / "smol.gguf", tokenizer, adapter=tmp_path / "style.gguf")
    assert adapter == tmp_path / "style.Modelfile"
    assert "\nFROM ./base/smol.gguf\nADAPTER ./style.gguf\n" in adapter.read_text()


def test_an_adapters_modelfile_says_ollama_0_34_1_refuses_it_and_where_to_go(tmp_path):
    # ollama PR #14969: Ollama 0.34.1 and later refuse ADAPTER; the merged export is the Ollama path,
    # llama.cpp's --lora the adapter's
    tokenizer = make_tokenizer("chatml")
    text = write_modelfile(tmp_path / "base" / "smol.gguf", tokenizer, adapter=tmp_path / "style.gguf").read_text()
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert text.startswith("\n".join(comments) + "\nFROM ./base/smol.gguf\nADAPTER ./style.gguf\n")
    note = " ".join(comments)
    assert "Ollama 0.34.1 and later refuse a Modelfile with an ADAPTER line" in note
    assert "lorakit export gguf RUN --out NAME.gguf, without --adapter-only" in note
    assert "llama-cli -m ./base/smol.gguf --lora ./style.gguf" in note
    merged = write_modelfile(tmp_path / "demo.gguf", tokenizer).read_text()
    assert "ADAPTER" not in merged and not merged.startswith("#")


def test_modelfile_lines(tmp_path):
    tokenizer = make_tokenizer("llama-3")
    path = write_modelfile(tmp_path / "m.gguf", tokenizer, system_prompt="Be brief.")
    text = path.read_text()
    assert text.startswith("FROM ./m.gguf\nTEMPLATE \"\"\"")
    assert 'SYSTEM """Be brief."""' in text
    assert stop_tokens(tokenizer) == ["<|end_of_text|>", "<|eot_id|>"]
    assert 'PARAMETER stop "<|eot_id|>"' in text and 'PARAMETER stop "<|end_of_text|>"' in text
