"""Label masking: the loss is taken on exactly the assistant answers plus their end tokens."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorakit.config import ModelConfig
from lorakit.data.collate import PadCollator
from lorakit.data.encode import IGNORE_INDEX, SampleDropped, encode_conversation, encode_text
from lorakit.data.records import Record
from lorakit.data.shapes import detect_shape, to_content
from lorakit.templates import NAMED_TEMPLATES, TemplateError, resolve_template
from tests.conftest import make_tokenizer, needs_embedded

MULTI_TURN = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "It is four."},
    {"role": "user", "content": "And the city of Maria?"},
    {"role": "assistant", "content": '{"name": "Maria", "city": "Lisbon"}'},
]


def label_runs(labels: list[int]) -> list[list[int]]:
    """Contiguous runs of kept labels: one per trained assistant turn."""
    runs, current = [], []
    for x in labels:
        if x == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(x)
    if current:
        runs.append(current)
    return runs


def end_token_of(tokenizer, template_name: str) -> str:
    end = NAMED_TEMPLATES[template_name][1] if template_name in NAMED_TEMPLATES else None
    return end or tokenizer.eos_token


def check_masking(tokenizer, template, conv, end_text, lead=""):
    enc = encode_conversation(tokenizer, template, conv, max_length=4096)
    assert len(enc.input_ids) == len(enc.labels)
    # Label t is input t (no shift here; the model shifts) or ignored.
    for tok, lab in zip(enc.input_ids, enc.labels):
        assert lab in (IGNORE_INDEX, tok)
    answers = [m["content"] for m in conv if m["role"] == "assistant"]
    runs = label_runs(enc.labels)
    decoded = [tokenizer.decode(run, skip_special_tokens=False) for run in runs]
    assert decoded == [lead + a + end_text for a in answers]
    # Every masked token together is exactly the prompt side: nothing of a user/system turn is trained.
    masked_text = tokenizer.decode(
        [t for t, lab in zip(enc.input_ids, enc.labels) if lab == IGNORE_INDEX], skip_special_tokens=False
    )
    for message in conv:
        if message["role"] != "assistant":
            assert message["content"] in masked_text
    return enc


def test_masking_each_family(family_tokenizer):
    family, tokenizer = family_tokenizer
    template = resolve_template(tokenizer, "auto")
    enc = check_masking(tokenizer, template, MULTI_TURN, end_token_of(tokenizer, family))
    if family == "llama-3":
        # The template writes BOS itself; encoding must not add a second one.
        assert enc.input_ids[0] == tokenizer.bos_token_id and enc.input_ids[1] != tokenizer.bos_token_id


@pytest.mark.parametrize("name", ["alpaca", "human-assistant"])
def test_plain_templates_train_on_eos(name):
    tokenizer = make_tokenizer("chatml", with_template=False)
    template = resolve_template(tokenizer, name)
    # human-assistant's prompt ends at "Assistant:", so each answer starts with its space.
    check_masking(tokenizer, template, MULTI_TURN, tokenizer.eos_token, lead=" " if name == "human-assistant" else "")


def test_no_template_falls_back_to_alpaca(caplog):
    tokenizer = make_tokenizer("chatml", with_template=False)
    template = resolve_template(tokenizer, "auto")
    assert template.name == "alpaca"
    assert "no chat template" in caplog.text


@pytest.mark.slow
@needs_embedded
def test_masking_embedded_model_template(embedded_cache):
    from lorakit.model.loader import load_tokenizer, resolve_model_folder

    tokenizer = load_tokenizer(resolve_model_folder(ModelConfig(cache_dir=embedded_cache)))
    template = resolve_template(tokenizer, "auto")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the case where padding must not hide EOS
    enc = check_masking(tokenizer, template, MULTI_TURN, "<|im_end|>")
    # Without a system turn the template injects its own system prompt: still masked.
    conv = MULTI_TURN[1:3]
    enc = check_masking(tokenizer, template, conv, "<|im_end|>")
    assert "SmolLM" in tokenizer.decode(enc.input_ids)


def test_last_assistant_only():
    tokenizer = make_tokenizer("chatml")
    template = resolve_template(tokenizer, "auto")
    enc = encode_conversation(tokenizer, template, MULTI_TURN, 4096, train_on="last_assistant")
    runs = label_runs(enc.labels)
    assert [tokenizer.decode(r) for r in runs] == ['{"name": "Maria", "city": "Lisbon"}<|im_end|>']


def test_user_text_that_looks_like_a_marker_is_not_trained():
    tokenizer = make_tokenizer("chatml")
    template = resolve_template(tokenizer, "auto")
    conv = [
        {"role": "user", "content": "Say <|im_start|>assistant\nhello please"},
        {"role": "assistant", "content": "hello"},
    ]
    enc = encode_conversation(tokenizer, template, conv, 4096)
    assert [tokenizer.decode(r) for r in label_runs(enc.labels)] == ["hello<|im_end|>"]


def test_pad_equal_to_eos_keeps_eos_labels():
    tokenizer = make_tokenizer("chatml")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    template = resolve_template(tokenizer, "auto")
    short = encode_conversation(tokenizer, template, MULTI_TURN[1:3], 4096)
    long = encode_conversation(tokenizer, template, MULTI_TURN, 4096)
    batch = PadCollator(tokenizer.pad_token_id)([short, long])
    row = batch["labels"][0]
    n = len(short.input_ids)
    eos = tokenizer.eos_token_id
    # The real end token of the short sample is a label; its padding is not.
    assert row[:n].tolist() == short.labels and eos in row[:n].tolist()
    assert (row[n:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][0, :n].all() and not batch["attention_mask"][0, n:].any()
    assert batch["input_ids"].shape[1] == len(long.input_ids)  # padded to the batch, not max_length


def test_truncation_policies():
    tokenizer = make_tokenizer("chatml")
    template = resolve_template(tokenizer, "auto")
    full = encode_conversation(tokenizer, template, MULTI_TURN, 4096)
    limit = len(full.input_ids) - 3
    with pytest.raises(SampleDropped, match="longer than max_length"):
        encode_conversation(tokenizer, template, MULTI_TURN, limit, truncation="drop")
    with pytest.raises(ValueError, match="max_length"):
        encode_conversation(tokenizer, template, MULTI_TURN, limit, truncation="error")
    cut = encode_conversation(tokenizer, template, MULTI_TURN, limit, truncation="cut")
    assert len(cut.input_ids) == limit and cut.cut_tokens == 3 and cut.lost_end
    assert cut.input_ids == full.input_ids[:limit]


@pytest.mark.parametrize(
    "conv,reason",
    [
        ([{"role": "user", "content": "hi"}], "no assistant turn"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}], "empty assistant answer"),
        ([{"role": "user", "content": " "}, {"role": "assistant", "content": "hi"}], "empty prompt"),
    ],
)
def test_unusable_samples_are_dropped_with_a_reason(conv, reason):
    tokenizer = make_tokenizer("chatml")
    with pytest.raises(SampleDropped, match=reason):
        encode_conversation(tokenizer, resolve_template(tokenizer, "auto"), conv, 4096)


# Texts that start and end with a visible character: a leading newline would merge with the
# template's own newline into one token, which then belongs to neither side alone.
_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40
).map(str.strip).filter(bool)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    family=st.sampled_from(["chatml", "llama-3", "phi-3"]),
    system=st.one_of(st.none(), _text),
    turns=st.lists(st.tuples(_text, _text), min_size=1, max_size=4),
)
def test_property_labels_are_answers_plus_end(family, system, turns):
    tokenizer = TOKENIZERS.setdefault(family, make_tokenizer(family))
    conv = [{"role": "system", "content": system}] if system else []
    for user, answer in turns:
        conv += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    template = resolve_template(tokenizer, "auto")
    check_masking(tokenizer, template, conv, end_token_of(tokenizer, family))


TOKENIZERS: dict = {}


# --- train_on=everything, plain text, and a user's own template file ---------------------------

def test_train_on_everything_trains_every_token():
    tokenizer = make_tokenizer("chatml")
    enc = encode_conversation(tokenizer, resolve_template(tokenizer, "auto"), MULTI_TURN, 4096, train_on="everything")
    assert enc.labels == enc.input_ids


def test_text_sample_trains_everything_and_ends_with_eos():
    tokenizer = make_tokenizer("chatml")
    enc = encode_text(tokenizer, "The quick brown fox.", 4096)
    assert enc.labels == enc.input_ids and enc.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(enc.input_ids) == "The quick brown fox.<|im_end|>"
    cut = encode_text(tokenizer, "The quick brown fox.", len(enc.input_ids) - 1, truncation="cut")
    assert cut.lost_end and cut.cut_tokens == 1
    with pytest.raises(SampleDropped, match="empty text"):
        encode_text(tokenizer, "  ", 4096)


USER_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '### Q: ' + m['content'] + '\\n' }}"
    "{% elif m['role'] == 'system' %}{{ m['content'] + '\\n' }}"
    "{% else %}{{ '### A:\\n' + m['content'] + eos_token + '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### A:\\n' }}{% endif %}"
)


def test_template_from_a_file(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text(USER_TEMPLATE, encoding="utf-8")
    tokenizer = make_tokenizer("chatml", with_template=False)
    template = resolve_template(tokenizer, str(path))
    assert template.name == "mine" and tokenizer.eos_token_id in template.end_token_ids
    enc = check_masking(tokenizer, template, MULTI_TURN, tokenizer.eos_token)
    assert tokenizer.decode(enc.input_ids).startswith("You answer briefly.\n### Q: What is two plus two?")


def test_template_file_errors_name_the_line(tmp_path):
    path = tmp_path / "broken.jinja"
    path.write_text("{% for m in messages %}\n{{ m['content'] }\n{% endfor %}", encoding="utf-8")
    tokenizer = make_tokenizer("chatml")
    with pytest.raises(TemplateError, match=r"broken.jinja, line 2: not a valid Jinja template"):
        resolve_template(tokenizer, str(path))
    with pytest.raises(TemplateError, match="does not exist"):
        resolve_template(tokenizer, str(tmp_path / "absent.jinja"))
    with pytest.raises(TemplateError, match="unknown template 'vicuna'"):
        resolve_template(tokenizer, "vicuna")


# --- property: for records of every shape, the labels are exactly the answers plus end tokens ---

_pair = st.tuples(_text, _text)


@st.composite
def records_of_any_shape(draw):
    shape = draw(st.sampled_from(["alpaca", "dolly", "prompt_completion", "messages"]))
    system = draw(st.one_of(st.none(), _text))
    if shape == "alpaca":
        fields = {"instruction": draw(_text), "input": draw(st.one_of(st.just(""), _text)), "output": draw(_text)}
        fields["history"] = [list(p) for p in draw(st.lists(_pair, max_size=3))]
    elif shape == "dolly":
        fields = {"instruction": draw(_text), "context": draw(st.one_of(st.just(""), _text)), "response": draw(_text)}
    elif shape == "prompt_completion":
        fields = {"prompt": draw(_text), "completion": draw(_text)}
    else:
        turns = [{"from": "system", "value": system}] if system else []
        for user, answer in draw(st.lists(_pair, min_size=1, max_size=3)):
            turns += [{"from": "human", "value": user}, {"from": "gpt", "value": answer}]
        return shape, {"conversations": turns}
    if system:
        fields["system"] = system
    return shape, fields


@settings(max_examples=60, deadline=None)
@given(family=st.sampled_from(["chatml", "llama-3", "phi-3"]), shaped=records_of_any_shape())
def test_property_every_shape_trains_exactly_the_answers(family, shaped):
    shape, fields = shaped
    tokenizer = TOKENIZERS.setdefault(family, make_tokenizer(family))
    record = Record(fields, "p.jsonl", "line 1")
    assert detect_shape(fields) == shape
    conv = to_content(record, shape, None)
    check_masking(tokenizer, resolve_template(tokenizer, "auto"), conv, end_token_of(tokenizer, family))
