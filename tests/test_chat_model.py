"""The bundled chat model, tokstep/models/tinystories-chat, and scripts/train_chat.py that makes it.

* The shipped folder: a ChatML chat template, `<|im_start|>` / `<|im_end|>` added as special
  tokens, `<|im_end|>` among the end-of-turn ids, the base model's architecture with two more
  embedding rows, a model card crediting TinyStories.
* Chat turns on it, offline: stepped greedily they are `model.generate(do_sample=False)` token
  for token, and the model ends its turn with `<|im_end|>` by itself; the card's samples are
  what it writes.
* The script: how it turns a story into dialogues and labels, and a `--smoke` run (slow) whose
  folder loads with `tokstep.load` and has a chat template, the same bytes for the same seed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_train_script import COMMON_WORDS, load_cleanly, words_of

import tokstep
from tokstep.core.chat import control_token_ids, end_of_turn_ids, has_chat_template, start_turn
from tokstep.core.model import LanguageModel

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train_chat.py"
CORPUS = REPO.parent / "shared" / "corpus" / "tinystories"
NAME = "tinystories-chat"
SHIPPED = REPO / "tokstep" / "models" / NAME
BASE = REPO / "tokstep" / "models" / "tinystories"

sys.path.insert(0, str(SCRIPT.parent))
import train_chat  # noqa: E402  (a script, imported from its folder)

needs_corpus = pytest.mark.skipif(
    not (CORPUS / "train-1.txt").is_file(),
    reason=f"TinyStories corpus not found at {CORPUS} (CI keeps it in shared/ beside the repo)",
)
needs_shipped = pytest.mark.skipif(
    not (SHIPPED / "model.safetensors").is_file(), reason=f"no bundled chat model at {SHIPPED}"
)
PROMPTS = train_chat.CARD_PROMPTS  # the requests the model was trained on, as its card shows them


@pytest.fixture(scope="module")
def chat_lm() -> Iterator[LanguageModel]:
    """The bundled chat model, loaded by name with the Hugging Face Hub switched off."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield tokstep.load(NAME)


def im_end(lm: LanguageModel) -> int:
    return lm.tokenizer.convert_tokens_to_ids(train_chat.IM_END)


def generated(lm: LanguageModel, ids: list[int]) -> list[int]:
    """What `model.generate` writes greedily after `ids`: to an eos id or the context's end."""
    input_ids = torch.tensor([ids])
    with torch.inference_mode():
        out = lm.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=lm.context_length - len(ids),
        )
    return out[0, len(ids) :].tolist()


# ---------------------------------------------------------------------------
# The shipped folder
# ---------------------------------------------------------------------------


@needs_shipped
def test_the_chat_model_is_bundled_with_a_chatml_template_and_special_tokens(chat_lm):
    assert NAME in tokstep.bundled_models()
    tokenizer = chat_lm.tokenizer
    assert has_chat_template(tokenizer)
    tokens = {t.content: (i, t.special) for i, t in tokenizer.added_tokens_decoder.items()}
    for token in (train_chat.IM_START, train_chat.IM_END):
        token_id, special = tokens[token]
        assert special and token_id in control_token_ids(tokenizer)
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id]  # one token, not its text
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    s, e = train_chat.IM_START, train_chat.IM_END
    assert rendered == f"{s}user\nHi{e}\n{s}assistant\nHello.{e}\n{s}assistant\n"  # ChatML


@needs_shipped
def test_end_of_turn_ids_include_im_end_and_are_the_generation_configs_eos(chat_lm):
    eos = chat_lm.model.generation_config.eos_token_id
    assert im_end(chat_lm) in eos and chat_lm.tokenizer.eos_token_id in eos
    assert end_of_turn_ids(chat_lm) == frozenset(eos)
    saved = json.loads((SHIPPED / "generation_config.json").read_text())
    assert frozenset(saved["eos_token_id"]) == end_of_turn_ids(chat_lm)


@needs_shipped
def test_the_architecture_is_the_base_models_with_two_more_token_rows(chat_lm):
    base = tokstep.load("tinystories")
    config, base_config = chat_lm.model.config, base.model.config
    for key in ("n_layer", "n_head", "n_embd", "n_positions", "tie_word_embeddings"):
        assert getattr(config, key) == getattr(base_config, key), key
    assert config.vocab_size == len(chat_lm.tokenizer) == len(base.tokenizer) + 2
    params = sum(p.numel() for p in chat_lm.model.parameters())
    assert params == sum(p.numel() for p in base.model.parameters()) + 2 * config.n_embd  # tied embeddings
    # The base vocabulary is unchanged: the same text gives the same ids.
    text = 'Tom said, "Look!" The cat ran.'
    assert chat_lm.tokenizer.encode(text) == base.tokenizer.encode(text)


@needs_shipped
def test_the_chat_model_loads_without_warnings():
    assert load_cleanly(SHIPPED) == ""


@needs_shipped
def test_the_model_card_credits_tinystories():
    card = (SHIPPED / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlicense: cdla-sharing-1.0\n")
    for credit in ("Eldan", "Li, 2023", "arXiv:2305.07759", "CDLA-Sharing-1.0", "https://cdla.dev/sharing-1-0/"):
        assert credit in card, credit
    assert "roneneldan/TinyStories" in card


# ---------------------------------------------------------------------------
# Chat turns on it
# ---------------------------------------------------------------------------


@needs_shipped
@pytest.mark.parametrize("prompt", PROMPTS)
def test_a_greedy_turn_is_generate_token_for_token_and_ends_with_im_end(chat_lm, prompt):
    turn = start_turn(chat_lm, [], prompt)
    expected = generated(chat_lm, turn.stepper.ids)
    steps = []
    while not turn.over:
        steps.append(turn.step())
    assert [s.token_id for s in steps] == expected
    assert turn.ended_by_model and expected[-1] == im_end(chat_lm), "the model ends its turn by itself"
    assert len(expected) <= 200  # a few sentences, not a run to the context's end
    words = words_of(turn.reply_text())
    assert len(words) >= 10, turn.reply_text()
    assert sum(w in COMMON_WORDS for w in words) / len(words) >= 0.5, turn.reply_text()


@needs_shipped
def test_a_second_turn_goes_on_and_ends_too(chat_lm):
    first = start_turn(chat_lm, [], PROMPTS[0])
    while not first.over:
        first.step()
    turn = start_turn(chat_lm, first.history(), train_chat.FOLLOW_UP)
    expected = generated(chat_lm, turn.stepper.ids)
    while not turn.over:
        turn.step()
    assert turn.stepper.generated_ids == expected and expected[-1] == im_end(chat_lm)
    assert turn.reply_text() and turn.reply_text() != first.reply_text()


@needs_shipped
def test_the_model_cards_samples_are_what_the_model_writes(chat_lm):
    card = (SHIPPED / "README.md").read_text(encoding="utf-8")
    for prompt in PROMPTS:
        match = re.search(
            rf"\*\*{re.escape(repr(prompt))}\*\* → \((\d+) tokens[^)]*\)\n\n```text\n(.*?)\n```", card, re.S
        )
        assert match, prompt
        turn = start_turn(chat_lm, [], prompt)
        while not turn.over:
            turn.step()
        assert int(match.group(1)) == len(turn.stepper.generated_ids)
        assert match.group(2) == chat_lm.tokenizer.decode(turn.reply_ids, skip_special_tokens=True)


# ---------------------------------------------------------------------------
# The training script
# ---------------------------------------------------------------------------

STORY = (
    "Once upon a time, there was a little cat named Tom. Tom liked to sit in the sun.\n"
    "One day, Tom saw a red ball. He ran to the ball and pushed it. The ball rolled away!\n"
    'Tom was sad. Then his friend, a dog, brought the ball back. "Thank you!" said Tom.'
)


def test_a_story_becomes_requests_answered_with_its_own_paragraphs():
    s = train_chat.ChatSettings(dialogues_per_story=30, follow_up_rate=0.5)
    nouns = frozenset({"cat", "ball", "dog", "sun"})
    dialogues = train_chat.story_dialogues(STORY, nouns, train_chat.random.Random(0), s)
    assert {kind for kind, _ in dialogues} == {"about", "plain", "next"}
    for kind, messages in dialogues:
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        # The replies are the story's text, in order, each ending where a paragraph does.
        assert " ".join(replies).replace("\n", " ") in STORY.replace("\n", " ")
        for reply in replies:
            end = STORY.index(reply) + len(reply)
            assert end == len(STORY) or STORY[end] == "\n", reply
        if kind == "about":
            subject = re.search(r"about (.+?)[.?]?$", messages[0]["content"]).group(1)
            assert subject.split()[-1] in replies[0]
        if kind == "next":
            first_sentence = STORY[: STORY.index(".") + 1]
            assert messages[0]["content"].startswith(first_sentence) and not replies[0].startswith("Once")


def test_labels_cover_the_replies_and_their_end_of_turn_only():
    tokenizer = train_chat.chat_tokenizer(BASE)
    messages = [
        {"role": "user", "content": "Tell me a story about a cat."},
        {"role": "assistant", "content": "Once upon a time, there was a cat."},
        {"role": "user", "content": "What happens next?"},
        {"role": "assistant", "content": "The cat ran home."},
    ]
    ids, labels = train_chat.encode_dialogue(tokenizer, messages, max_reply_tokens=100)
    assert ids == list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
    kept = [i for i, label in zip(ids, labels, strict=True) if label != -100]
    assert all(label in (-100, i) for i, label in zip(ids, labels, strict=True))
    e = train_chat.IM_END
    assert tokenizer.decode(kept) == f"{messages[1]['content']}{e}{messages[3]['content']}{e}"
    assert train_chat.encode_dialogue(tokenizer, messages, max_reply_tokens=5) is None  # a reply too long


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    """The training script in a fresh interpreter, as a user runs it."""
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=180, env=env, check=False
    )


def test_help_says_where_to_get_tinystories(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_chat.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "roneneldan/TinyStories" in capsys.readouterr().out


@pytest.mark.slow
@needs_corpus
def test_a_smoke_run_writes_a_chat_model_folder_deterministically(tmp_path):
    folders = [tmp_path / "a", tmp_path / "b"]
    for out in folders:
        result = run_script("--corpus", str(CORPUS), "--out", str(out), "--smoke")
        assert result.returncode == 0, result.stderr
    out = folders[0]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md"):
        assert (out / name).is_file(), name
    lm = tokstep.load(str(out))
    assert has_chat_template(lm.tokenizer) and im_end(lm) in end_of_turn_ids(lm)
    turn = start_turn(lm, [], "Tell me a story about a cat.")
    first = generated(lm, turn.stepper.ids)[0]
    assert turn.step().token_id == first
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "arXiv:2305.07759" in card and "https://cdla.dev/sharing-1-0/" in card
    # The same seed gives the same weights, byte for byte.
    assert (folders[0] / "model.safetensors").read_bytes() == (folders[1] / "model.safetensors").read_bytes()
