"""Two models writing the same prompt side by side: their tokens aligned, and where they disagree.

No Gradio. Each model keeps its own `TokenStepper`, in a `Side` with what its distributions said of
the other model's choices. `step_pair` steps both, greedy; `align` lines their tokens up in rows:

  the same tokenizer (the same vocabulary: an id means the same text to both)   by position: row i
      holds each model's i-th generated token. They disagree where the ids differ, and each model's
      probability of the other's choice is a lookup of the other's id in its own distribution at that
      step (`NextTokenSummary.prob`).
  different tokenizers   by text: every token covers characters of its model's generated text. A row
      starts with a token of each model, then takes a token of the model whose text in the row is
      shorter, and ends as soon as both have written as many characters (a token boundary at the same
      place: ' there' from one model and ' the' + 're' from the other share a row) or their texts stop
      agreeing (neither is the start of the other; the next row then starts after each one's text).
      They disagree where the row's texts differ; each model's probability of the other's choice is
      then that of the *first token of the other's text*, tokenized by this model's tokenizer, at the
      row's start.

With different tokenizers a step writes what the row needs: a token of each model at a row's start,
then one of the model behind, so the texts advance together. Each model's distribution at the row's
start is the one its cross probability needs: its `Side` keeps it until the row ends, and nothing
else is kept (a summary per model, however long the row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from tokstep.core.distribution import NextTokenSummary
from tokstep.core.model import LanguageModel
from tokstep.core.stepper import Step, TokenStepper

COMPARE_TOP_K = 3  # each chosen token's candidates kept with it


@dataclass(frozen=True)
class Cross:
    """One model's probability of the other model's choice, in a row where they disagree."""

    token_id: int  # a token of this model's vocabulary
    token: str  # its display text
    prob: float  # this model's probability of it, where the row began
    # True: the first token of the other model's text in this model's tokenizer (the tokenizers differ),
    # not the other model's own token.
    first_of_text: bool


@dataclass(eq=False)
class Side:
    """One model's half of a comparison: its stepper and, row by row, its probability of the other
    model's choice. Each half lives in a state of its own; `step_pair` and `align` take both."""

    stepper: TokenStepper
    by_position: bool  # the two models share a tokenizer (`same_tokenizer`)
    name: str = ""  # the model's name as the caller chose it (the stepper's model's name if not given)
    cross: list[Cross | None] = field(default_factory=list)  # per finished row; None where they agree
    # Different tokenizers: this model's distribution at the first character of the row not yet ended.
    row_start: NextTokenSummary | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or self.stepper.lm.name

    @property
    def lm(self) -> LanguageModel:
        return self.stepper.lm

    @property
    def steps(self) -> list[Step]:
        return self.stepper.steps

    def done(self, limit: int | None = None) -> bool:
        """Whether this model writes no more: it wrote an end-of-text token, its context is full, or it
        wrote `limit` tokens."""
        stepper = self.stepper
        written = len(stepper.generated_ids)
        if written and stepper.ids[-1] in self.lm.eos_token_ids:
            return True
        if stepper.room_left is not None and stepper.room_left <= 0:
            return True
        return limit is not None and written >= limit

    def text_and_ends(self) -> tuple[str, list[int]]:
        """The generated text, and the character offset where each generated token ends in it.

        Offsets come from decoding the whole sequence up to each token (the prompt included, so a
        tokenizer that spells a word's leading space with the word decodes it as it would in the text);
        a token holding part of a character counts where that character ends."""
        stepper, texts = self.stepper, self.lm.texts
        start = len(texts.decode(stepper.ids[: stepper.prompt_length]))
        ends: list[int] = []
        for count in range(stepper.prompt_length + 1, len(stepper.ids) + 1):
            ends.append(max(len(texts.decode(stepper.ids[:count])) - start, ends[-1] if ends else 0))
        text = texts.decode(stepper.ids)[start:]
        return text, [min(end, len(text)) for end in ends]


def same_tokenizer(a: LanguageModel, b: LanguageModel) -> bool:
    """Whether every id means the same text to both models' tokenizers (distilgpt2 and gpt2: yes)."""
    return a.tokenizer is b.tokenizer or a.tokenizer.get_vocab() == b.tokenizer.get_vocab()


def start_pair(a: TokenStepper, b: TokenStepper, names: tuple[str, str] = ("", "")) -> tuple[Side, Side]:
    """The two halves of a comparison of `a` and `b` (each on its model, from the same prompt)."""
    by_position = same_tokenizer(a.lm, b.lm)
    return Side(a, by_position, names[0]), Side(b, by_position, names[1])


@dataclass(frozen=True)
class Row:
    """One row of the comparison: each model's tokens there, and whether and how they disagree."""

    a: list[Step]  # model A's tokens in this row: one by position, any number by text (none: done)
    b: list[Step]
    a_text: str  # what they write together
    b_text: str
    ended: bool  # by text: both texts reached a common boundary; by position: both wrote (or one is done)
    agree: bool  # the same token (by position) or the same text (by text)
    a_cross: Cross | None  # A's probability of B's choice (None where they agree or the row has not ended)
    b_cross: Cross | None


def step_pair(a: Side, b: Side, limit: int | None = None, runs: tuple[int | None, int | None] = (None, None)) -> bool:
    """One step of the comparison, greedy: a token of each model (by text: at a row's start; inside a
    row, a token of the model whose text in it is shorter). A model that is done (`Side.done`) writes no
    more. `runs` are the steppers' run marks (TokenStepper.start_run): a stopped run raises RunStopped.
    False when both were done and nothing was written."""
    sides = [side for side in (a, b) if not side.done(limit)]
    if not sides:
        return False
    run = dict(zip((id(a), id(b)), runs, strict=True))
    if a.by_position:
        summaries = {id(side): side.stepper.next_summary() for side in sides}
        chosen = {id(side): side.stepper.step(COMPARE_TOP_K, run=run[id(side)]) for side in sides}
        both = len(sides) == 2
        for side, other in ((a, b), (b, a)):
            other_step = chosen.get(id(other))
            agree = both and other_step.token_id == chosen[id(side)].token_id
            side.cross.append(None if not both or agree else _lookup(side, summaries[id(side)], other_step))
        return True
    rows = align(a, b)
    movers = sides  # a new row begins with a token of each
    if rows and not rows[-1].ended:  # the open row: the model whose text in it is shorter writes
        row = rows[-1]
        behind = a if not row.a or (row.b and len(row.a_text) < len(row.b_text)) else b
        movers = [side for side in sides if side is behind] or sides  # the other, when the one behind is done
    for side in movers:
        if side.row_start is None:  # at the row's first character: where its cross probability is read
            side.row_start = kept(side.stepper.next_summary())
        side.stepper.step(COMPARE_TOP_K, run=run[id(side)])
    _end_rows(a, b)
    return True


def kept(summary: NextTokenSummary) -> NextTokenSummary:
    """`summary`, to keep past its step for `prob` lookups: with a copy of its own probabilities, since
    a batched pass's summaries are views into the whole batch's tensors, which keeping one would keep."""
    if summary.probs is None:  # a serving engine's: its top tokens, and lookups by request
        return summary
    return replace(summary, logits=None, probs=summary.probs.clone())


def _lookup(side: Side, summary: NextTokenSummary, other: Step) -> Cross:
    """`side`'s probability of the other model's token (the same vocabulary: a lookup)."""
    inside = other.token_id < side.lm.vocab_size  # a model may have a narrower output than its tokenizer
    prob = summary.prob(other.token_id) if inside else 0.0
    return Cross(other.token_id, side.lm.texts.text(other.token_id), prob, first_of_text=False)


def _end_rows(a: Side, b: Side) -> None:
    """Different tokenizers: give each row that has just ended its cross probabilities."""
    rows = align(a, b)
    for row in rows[len(a.cross) : sum(1 for row in rows if row.ended)]:
        if row.agree:
            a.cross.append(None)
            b.cross.append(None)
        else:
            a.cross.append(_first_of_text(a, row.b_text))
            b.cross.append(_first_of_text(b, row.a_text))
        a.row_start = b.row_start = None  # the next row begins with both texts at its first character


def _first_of_text(side: Side, text: str) -> Cross | None:
    """`side`'s probability, where the row began, of the first token of `text` (the other model's) in
    `side`'s own tokenizer."""
    ids = side.lm.tokenizer.encode(text, add_special_tokens=False)
    if not ids or side.row_start is None:
        return None
    first = int(ids[0])
    prob = side.row_start.prob(first) if first < side.lm.vocab_size else 0.0
    return Cross(first, side.lm.texts.text(first), prob, first_of_text=True)


def align(a: Side, b: Side) -> list[Row]:
    """The comparison's rows, in order; the last one may not have ended yet."""
    return _by_position(a, b) if a.by_position else _by_text(a, b)


def _by_position(a: Side, b: Side) -> list[Row]:
    rows = []
    a_done, b_done = a.done(), b.done()
    for index in range(max(len(a.steps), len(b.steps))):
        a_steps, b_steps = a.steps[index : index + 1], b.steps[index : index + 1]
        agree = bool(a_steps and b_steps) and a_steps[0].token_id == b_steps[0].token_id
        ended = (bool(a_steps) or a_done) and (bool(b_steps) or b_done)
        rows.append(
            Row(
                a_steps, b_steps, _joined(a, a_steps), _joined(b, b_steps), ended, agree,
                _at(a.cross, index), _at(b.cross, index),
            )
        )  # fmt: skip
    return rows


def _joined(side: Side, steps: Sequence[Step]) -> str:
    return side.lm.texts.decode([step.token_id for step in steps])


def _at(values: list[Cross | None], index: int) -> Cross | None:
    return values[index] if index < len(values) else None


def row_ended(a_text: str, b_text: str) -> bool:
    """Whether a row holding these two texts (each at least one token) has ended: both wrote as many
    characters (a token boundary at the same place), or the texts stopped agreeing (neither is the
    start of the other)."""
    return len(a_text) == len(b_text) or not (a_text.startswith(b_text) or b_text.startswith(a_text))


@dataclass
class _Reader:
    """One model's tokens read into rows, in order (for `_by_text`)."""

    text: str
    ends: list[int]  # where each token ends in `text`
    next: int = 0  # the first token not yet in a row
    start: int = 0  # where the row's text starts
    end: int | None = None  # where it ends (None: no token of this model in the row yet)

    @property
    def left(self) -> bool:
        return self.next < len(self.ends)

    @property
    def row_text(self) -> str:
        return self.text[self.start : self.start if self.end is None else self.end]

    def take(self) -> None:
        self.end, self.next = self.ends[self.next], self.next + 1

    def take_rest(self) -> None:
        if self.left:
            self.end, self.next = self.ends[-1], len(self.ends)

    def next_row(self) -> None:
        self.start, self.end = (self.start if self.end is None else self.end), None


def _by_text(a: Side, b: Side) -> list[Row]:
    """Rows as the steps made them: at a row's start a token of each model, then a token of the model
    whose text in the row is shorter, until the row ends (`row_ended`). When the model behind has no
    token left (it is done), the other's remaining tokens make the last row, unended."""
    readers = _Reader(*a.text_and_ends()), _Reader(*b.text_and_ends())
    ra, rb = readers
    rows: list[Row] = []
    while ra.left or rb.left:
        firsts = ra.next, rb.next
        for reader in readers:
            if reader.left:
                reader.take()
        while not (ended := ra.end is not None and rb.end is not None and row_ended(ra.row_text, rb.row_text)):
            a_behind = ra.end is None or (rb.end is not None and len(ra.row_text) < len(rb.row_text))
            behind, ahead = (ra, rb) if a_behind else (rb, ra)
            if not behind.left:
                ahead.take_rest()
                break
            behind.take()
        index = len(rows)
        row_a, row_b = ra.row_text, rb.row_text
        rows.append(
            Row(
                a.steps[firsts[0] : ra.next], b.steps[firsts[1] : rb.next], row_a, row_b, ended,
                ended and row_a == row_b, _at(a.cross, index), _at(b.cross, index),
            )
        )  # fmt: skip
        for reader in readers:
            reader.next_row()
    return rows


def disagreements(rows: Sequence[Row]) -> int:
    """How many ended rows the two models disagree in."""
    return sum(1 for row in rows if row.ended and not row.agree)
