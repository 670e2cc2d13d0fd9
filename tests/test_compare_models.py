"""Two models side by side (tokstep.core.compare, tokstep.web.compare_section): their tokens aligned by
position when they share a tokenizer and by text when they do not, and each model's probability of
the other's choice. Expected tokens come from each model stepped alone, expected alignments from the
tokens' decoded text, and expected probabilities from each model's own logits, computed here."""

from __future__ import annotations

import pytest
import torch
from gradio_client import Client

import tokstep
from tokstep.core.compare import COMPARE_TOP_K, Side, align, start_pair, step_pair
from tokstep.core.model import LanguageModel
from tokstep.core.stepper import TokenStepper
from tokstep.web.compare_section import AUTORUN_STEPS, default_pair

pytest_plugins = ["model_choice_support"]

PROMPT = "Once upon a time"


def greedy(lm: LanguageModel, n: int) -> list[int]:
    return [step.token_id for step in tokstep.generate_steps(lm, PROMPT, max_new_tokens=n)]


def next_probs(lm: LanguageModel, ids: list[int]) -> torch.Tensor:
    """The model's own next-token distribution after `ids`: one plain forward pass, no tokstep."""
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids], device=lm.device)).logits[0, -1]
    return torch.softmax(logits.double(), -1)


def pair(a: LanguageModel, b: LanguageModel) -> tuple[Side, Side]:
    return start_pair(TokenStepper.from_text(a, PROMPT), TokenStepper.from_text(b, PROMPT), ("A", "B"))


def prompt_ids(lm: LanguageModel) -> list[int]:
    return tokstep.tokenize(lm.tokenizer, PROMPT)


# --- one tokenizer: by position ---------------------------------------------------------------------


def test_one_tokenizer_aligns_by_position_and_each_model_looks_up_the_other_s_token(tiny_lm, other_lm):
    a, b = pair(tiny_lm, other_lm)
    assert a.by_position and b.by_position  # two random GPT-2s with GPT-2's tokenizer
    for _ in range(6):
        assert step_pair(a, b)
    rows = align(a, b)
    expected_a, expected_b = greedy(tiny_lm, 6), greedy(other_lm, 6)
    assert [row.a[0].token_id for row in rows] == expected_a and [row.b[0].token_id for row in rows] == expected_b
    differ = 0
    for index, row in enumerate(rows):
        a_id, b_id = expected_a[index], expected_b[index]
        assert row.ended and row.agree == (a_id == b_id)
        before_a, before_b = prompt_ids(tiny_lm) + expected_a[:index], prompt_ids(other_lm) + expected_b[:index]
        own_a, own_b = next_probs(tiny_lm, before_a), next_probs(other_lm, before_b)
        # Each model's chosen token with its probability and its top 3, as it would show them alone.
        assert row.a[0].prob == pytest.approx(own_a[a_id].item(), rel=1e-4)
        assert [c.token_id for c in row.a[0].top] == torch.topk(own_a, COMPARE_TOP_K).indices.tolist()
        assert [c.token_id for c in row.b[0].top] == torch.topk(own_b, COMPARE_TOP_K).indices.tolist()
        if row.agree:
            assert row.a_cross is row.b_cross is None
            continue
        differ += 1
        # A's probability of B's token, in A's own distribution there, and the other way round.
        assert (row.a_cross.token_id, row.b_cross.token_id) == (b_id, a_id)
        assert not row.a_cross.first_of_text and not row.b_cross.first_of_text
        assert row.a_cross.prob == pytest.approx(own_a[b_id].item(), rel=1e-4, abs=1e-12)
        assert row.b_cross.prob == pytest.approx(own_b[a_id].item(), rel=1e-4, abs=1e-12)
    assert differ  # two differently seeded models: the test saw disagreements


def test_a_model_beside_itself_agrees_everywhere(tiny_lm):
    a, b = pair(tiny_lm, tiny_lm)
    for _ in range(4):
        step_pair(a, b)
    rows = align(a, b)
    assert len(rows) == 4 and all(row.agree and row.a_cross is None for row in rows)


# --- different tokenizers: by text ------------------------------------------------------------------


def token_ends(lm: LanguageModel, ids: list[int]) -> list[int]:
    """Where each token ends in the text, from each token's own decoded text (byte-level tokens that
    each hold whole characters, as these do)."""
    ends, total = [], 0
    for token_id in ids:
        total += len(lm.tokenizer.decode([token_id]))
        ends.append(total)
    return ends


def test_the_same_text_in_two_tokenizers_shares_rows_where_both_end_a_token(bundled_lm, tiny_lm):
    continuation = " there was a curious astronaut named Zorblax who loved marshmallows."
    a, b = pair(bundled_lm, tiny_lm)
    assert not a.by_position  # tinystories' own 2,048-token vocabulary against GPT-2's
    picks = {}
    for side in (a, b):
        picks[id(side)] = side.lm.tokenizer.encode(continuation, add_special_tokens=False)
        for token_id in picks[id(side)]:
            side.stepper.step(COMPARE_TOP_K, token_id=token_id)
    a_ends, b_ends = token_ends(bundled_lm, picks[id(a)]), token_ends(tiny_lm, picks[id(b)])
    assert a_ends[-1] == b_ends[-1] == len(continuation)
    common = sorted(set(a_ends) & set(b_ends))
    rows = align(a, b)
    assert [len(row.a_text) for row in rows] == [end - start for start, end in zip([0, *common], common, strict=False)]
    assert "".join(row.a_text for row in rows) == "".join(row.b_text for row in rows) == continuation
    assert all(row.ended and row.agree for row in rows)
    # Each row holds the tokens that write its text; somewhere one model needs more tokens than the other.
    for row in rows:
        assert bundled_lm.tokenizer.decode([s.token_id for s in row.a]) == row.a_text
        assert tiny_lm.tokenizer.decode([s.token_id for s in row.b]) == row.b_text
    assert any(len(row.a) != len(row.b) for row in rows)


def expected_rows(a_tokens: list[str], b_tokens: list[str]) -> list[tuple[int, int]]:
    """How many tokens of each model each ended row holds, by the rule in words: a row starts with a
    token of each, takes the next token of the model whose text in it is shorter, and ends once both
    texts are as long, or neither is the start of the other."""
    rows, i, j = [], 0, 0
    while i < len(a_tokens) and j < len(b_tokens):
        a_text, b_text, a_count, b_count = a_tokens[i], b_tokens[j], 1, 1
        while len(a_text) != len(b_text) and (a_text.startswith(b_text) or b_text.startswith(a_text)):
            if len(a_text) < len(b_text):
                if i + a_count == len(a_tokens):
                    return rows
                a_text, a_count = a_text + a_tokens[i + a_count], a_count + 1
            else:
                if j + b_count == len(b_tokens):
                    return rows
                b_text, b_count = b_text + b_tokens[j + b_count], b_count + 1
        rows.append((a_count, b_count))
        i, j = i + a_count, j + b_count
    return rows


def test_different_tokenizers_align_by_text_and_weigh_the_first_token_of_the_other_s(bundled_lm, tiny_lm):
    a, b = pair(bundled_lm, tiny_lm)
    while step_pair(a, b, limit=40):
        pass
    rows = align(a, b)
    for side, texts in ((a, [row.a_text for row in rows]), (b, [row.b_text for row in rows])):
        assert "".join(texts) == side.lm.tokenizer.decode(side.stepper.generated_ids)
    # The rows, from the tokens' own decoded texts (whole characters each, as these models' tokens are).
    a_tokens = [bundled_lm.tokenizer.decode([i]) for i in a.stepper.generated_ids]
    b_tokens = [tiny_lm.tokenizer.decode([i]) for i in b.stepper.generated_ids]
    ended = [row for row in rows if row.ended]
    assert [(len(row.a), len(row.b)) for row in ended] == expected_rows(a_tokens, b_tokens)
    checked = 0
    a_before, b_before = prompt_ids(bundled_lm), prompt_ids(tiny_lm)
    for row in ended:
        assert bundled_lm.tokenizer.decode([s.token_id for s in row.a]) == row.a_text
        assert tiny_lm.tokenizer.decode([s.token_id for s in row.b]) == row.b_text
        assert row.agree == (row.a_text == row.b_text)
        if not row.agree:
            # Each model's probability, where the row began, of the first token of the other's text.
            for cross, lm, before, other_text in (
                (row.a_cross, bundled_lm, a_before, row.b_text),
                (row.b_cross, tiny_lm, b_before, row.a_text),
            ):
                first = lm.tokenizer.encode(other_text, add_special_tokens=False)[0]
                assert cross.first_of_text and cross.token_id == first
                assert cross.prob == pytest.approx(next_probs(lm, before)[first].item(), rel=1e-4, abs=1e-12)
            checked += 1
        a_before = a_before + [s.token_id for s in row.a]
        b_before = b_before + [s.token_id for s in row.b]
    assert checked  # the two models disagreed, and rows ended, in these 40 tokens


def test_with_different_tokenizers_a_step_writes_what_the_row_needs(bundled_lm, tiny_lm):
    a, b = pair(bundled_lm, tiny_lm)
    for _ in range(30):
        if a.done() or b.done():
            break
        rows = align(a, b)
        counts = len(a.steps), len(b.steps)
        assert step_pair(a, b, limit=40)
        grew = len(a.steps) - counts[0], len(b.steps) - counts[1]
        if not rows or rows[-1].ended:
            assert grew == (1, 1)  # a new row: a token of each
        else:
            row = rows[-1]
            assert grew == ((1, 0) if len(row.a_text) < len(row.b_text) else (0, 1))  # of the one behind


# --- the page's section, on a launched server --------------------------------------------------------


def test_the_default_pair_is_the_page_s_model_and_another_one_that_can_load():
    assert default_pair(("a", "b", "c"), "a", {"b": "not here"}) == ("a", "c")
    assert default_pair(("a",), "a", {}) == ("a", "a")


def test_the_section_steps_both_models_and_shows_where_they_differ(
    choice_server_url, tiny_lm, other_lm, other_model_dir
):
    client = Client(choice_server_url, verbose=False)
    names = (tiny_lm.name, str(other_model_dir))
    table, status = client.predict(PROMPT, *names, api_name="/compare_step")
    first_a, first_b = greedy(tiny_lm, 1)[0], greedy(other_lm, 1)[0]
    assert "share a tokenizer" in status and "aligned by position" in status
    for lm, token_id in ((tiny_lm, first_a), (other_lm, first_b)):
        token = lm.texts.text(token_id).replace(" ", "␣")
        assert f"<code>{token}</code>" in table
    assert table.count("<tr") == 2  # the header and one row
    assert ("≠ differ" in table) == (first_a != first_b)
    updates = list(client.submit(PROMPT, *names, api_name="/compare_autorun"))
    assert len(updates) == AUTORUN_STEPS
    assert [update[0].count("<tr") - 1 for update in updates] == list(range(2, AUTORUN_STEPS + 2))
    table, status = client.predict(PROMPT, *names, api_name="/compare_reset")
    assert "Step both" in table and "Both models start" in status
