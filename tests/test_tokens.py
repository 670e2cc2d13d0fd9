"""Token views with GPT-2's real tokenizer: the notebook's ids and honest display text."""

from __future__ import annotations

import tokstep
from tokstep.core.tokens import TokenTexts, visible_whitespace

NOTEBOOK_PROMPT = "Once upon a time, generative models"
# Printed by the seed notebook for this prompt with GPT-2's tokenizer.
NOTEBOOK_IDS = [7454, 2402, 257, 640, 11, 1152, 876, 4981]
NOTEBOOK_TOKENS = ["Once", " upon", " a", " time", ",", " gener", "ative", " models"]


def test_real_gpt2_tokenizer_gives_the_notebooks_ids(gpt2_tokenizer):
    assert tokstep.tokenize(gpt2_tokenizer, NOTEBOOK_PROMPT) == NOTEBOOK_IDS


def test_tokenization_table_matches_the_notebook(gpt2_tokenizer):
    table = tokstep.tokenization_table(TokenTexts(gpt2_tokenizer), NOTEBOOK_IDS)
    assert [(row.token_id, row.token) for row in table] == list(zip(NOTEBOOK_IDS, NOTEBOOK_TOKENS, strict=True))


def test_partial_utf8_tokens_show_their_bytes_not_a_replacement_char(gpt2_tokenizer):
    texts = TokenTexts(gpt2_tokenizer)
    text = "I 😀 東京"
    ids = tokstep.tokenize(gpt2_tokenizer, text)
    shown = [texts.text(i) for i in ids]
    assert all("\ufffd" not in piece for piece in shown)
    # The shown pieces spell out exactly the UTF-8 bytes of the text, token by token.
    rebuilt = b"".join(
        piece.encode("latin-1", errors="strict") if "\\x" not in piece else _unescape(piece) for piece in shown
    )
    assert rebuilt == text.encode("utf-8")
    # Decoding the ids together still gives the characters back.
    assert texts.decode(ids) == text


def _unescape(piece: str) -> bytes:
    return piece.encode("latin-1").decode("unicode_escape").encode("latin-1")


def test_display_texts_of_different_tokens_differ(gpt2_tokenizer):
    texts = TokenTexts(gpt2_tokenizer)
    # Every byte-fallback-ish and ordinary token in a slice of the vocabulary, plus the
    # emoji pieces that all decode to "\ufffd" alone.
    ids = list(range(0, 2000)) + tokstep.tokenize(gpt2_tokenizer, "😀😁🤖 東京 中文")
    shown = {}
    for token_id in set(ids):
        shown.setdefault(texts.text(token_id), []).append(token_id)
    collisions = {text: group for text, group in shown.items() if len(group) > 1}
    assert collisions == {}


def test_whole_characters_stay_characters(gpt2_tokenizer):
    texts = TokenTexts(gpt2_tokenizer)
    ids = tokstep.tokenize(gpt2_tokenizer, " é")
    assert [texts.text(i) for i in ids] == [" é"]


def test_visible_whitespace_tells_leading_spaces_apart():
    assert visible_whitespace(" of") == "␣of"
    assert visible_whitespace("of") == "of"
    assert visible_whitespace("\n") == "↵"
