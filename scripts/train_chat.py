"""Fine-tune tokstep's bundled tinystories model into a tiny ChatML chat model, offline.

The dialogues are synthesized from the TinyStories training stories (no internet, no other
data): a user asks for a story ("Tell me a story about a cat.", "Tell me a story.", or gives a
first sentence and asks "What happens next?"), and the assistant answers with the story's own
text, a paragraph of a few sentences, then ``<|im_end|>``; some dialogues go on with "What
happens next?" and the story's next paragraph. Each dialogue is tokenized by the tokenizer's
own ChatML ``chat_template`` (``apply_chat_template``), so training sees exactly the ids chat
mode sends, and the loss is taken on the assistant's tokens only.

The tokenizer is the base model's plus two added special tokens, ``<|im_start|>`` and
``<|im_end|>``; the embeddings are resized for them (``resize_token_embeddings``); the
architecture stays the base model's. The output folder holds config, safetensors weights,
tokenizer files with the chat template, a generation config whose eos ids include
``<|im_end|>``, and a model card. The corpus text is never copied into it.

Examples::

    python scripts/train_chat.py --corpus ../shared/corpus/tinystories --out tokstep/models/tinystories-chat
    python scripts/train_chat.py --corpus ../shared/corpus/tinystories --out /tmp/chat --smoke
"""

from __future__ import annotations

import argparse
import math
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer
from train_tiny import machine_description, read_stories  # the base model's script, in this folder
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

REPO = Path(__file__).resolve().parents[1]
BASE_MODEL = REPO / "tokstep" / "models" / "tinystories"
TRAIN_FILES = ("train-1.txt", "train-2.txt")
VALID_FILE = "valid.txt"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# ChatML as Jinja, the template of Qwen and many other chat models: the same text their
# tokenizer_config.json carries, so the model reads what any ChatML tool would send it.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CARD_PROMPTS = (
    "Tell me a story about a cat.",
    "Tell me a story.",
    "Once upon a time, there was a little dog named Max. What happens next?",
)
FOLLOW_UP = "What happens next?"

CORPUS_HELP = (
    "folder holding train-1.txt, train-2.txt and valid.txt (plain text, stories separated by a "
    "blank line). TinyStories is the 'roneneldan/TinyStories' dataset on the Hugging Face Hub "
    "(https://huggingface.co/datasets/roneneldan/TinyStories, CDLA-Sharing-1.0); its "
    "TinyStories-train.txt / TinyStories-valid.txt use <|endoftext|> lines between stories, so "
    "replace those by blank lines first."
)

# What the user says. Variety (and the lower-case, unpunctuated forms made in `user_text`)
# keeps the model from keying on one exact wording of a request.
ABOUT_PROMPTS = (
    "Tell me a story about {x}.",
    "Tell me a story about {x}.",
    "Can you tell me a story about {x}?",
    "Please tell me a story about {x}.",
    "Write a story about {x}.",
    "I want a story about {x}.",
)
PLAIN_PROMPTS = (
    "Tell me a story.",
    "Tell me a story, please.",
    "Can you tell me a story?",
    "Tell me a bedtime story.",
    "I want to hear a story.",
    "Write a short story.",
)
NEXT_PROMPTS = ("{s} What happens next?", "{s}\nWhat happens next?", "{s} What happened next?")
FOLLOW_UPS = (FOLLOW_UP, FOLLOW_UP, "And then?", "What happened next?", "Tell me more.", "Go on.")

# Nouns that make odd subjects in "a story about a ...": times, parts of a place, feelings and
# acts ("a day", "a corner", "a love", "a walk"), and "a mom" / "a dad".
ABSTRACT_NOUNS = frozenset(
    {
        *("bit", "bottom", "corner", "day", "distance", "edge", "end", "few", "idea", "kind", "lot"),
        *("middle", "moral", "morning", "night", "noise", "rest", "secret", "side", "sound", "story"),
        *("thing", "things", "time", "top", "way", "while", "whole", "love", "walk", "job", "play", "work"),
        *("help", "fun", "nap", "look", "turn", "try", "mom", "dad"),
    }
)
SENTENCE_END = re.compile(r"[.!?]+[\"']?(?=\s|$)")
NAMED = re.compile(r"\bnamed ([A-Z][a-z]+)\b")
# An article and the (up to three) lower-case words after it: "a little red ball", "an owl".
ARTICLE_PHRASE = re.compile(r"\b(an?) ([a-z]+(?: [a-z]+){0,2})")
# Words that cannot describe the noun after them ("a lot of love", "a friend to play").
NOT_DESCRIBING = frozenset({"of", "to", "for", "with", "and", "or", "in", "on", "at", "that", "who", "lot", "bit"})


# ---------------------------------------------------------------------------
# Corpus and dialogues
# ---------------------------------------------------------------------------


def story_nouns(stories: Sequence[str], min_count: int = 3) -> frozenset[str]:
    """Words the stories use as nouns, told apart by where they occur.

    A noun follows a determiner ("the cat", "her ball") and now and then ends a phrase ("to the
    park."); an adjective after a determiner is nearly always followed by its noun ("the little
    girl") and often follows "was" or "very" ("was happy"), which a noun seldom does.
    """
    determiner = r"\b(?:[Tt]he|[Hh]is|[Hh]er|[Tt]heir|[Mm]y|[Yy]our) ([a-z]+)"
    after = Counter(m for s in stories for m in re.findall(determiner + r"\b", s))
    ending = Counter(m for s in stories for m in re.findall(determiner + r"[.,!?]", s))
    predicate = r"\b(?:very|so|too|more|most|was|is|were|are|be|felt|feel|looked) ([a-z]+)\b"
    described = Counter(m for s in stories for m in re.findall(predicate, s))
    return frozenset(
        w
        for w, n in after.items()
        if n >= min_count and ending[w] >= 0.02 * n and described[w] < 0.15 * n and w not in ABSTRACT_NOUNS
    )


def sentence_ends(text: str) -> list[int]:
    """Character offsets just after each sentence of `text` ("." "!" "?" and a closing quote)."""
    return [m.end() for m in SENTENCE_END.finditer(text)]


def reply_end(story: str, start: int, min_sentences: int) -> int:
    """Where a reply that starts at `start` ends: the first paragraph break after at least
    `min_sentences` sentences, or the story's end.

    Ending at a paragraph break gives the model one clear place to close its turn: where the
    base model would write a line break, it writes `<|im_end|>`.
    """
    for count, end in enumerate(sentence_ends(story[start:]), start=1):
        at = start + end
        if count >= min_sentences and (at >= len(story) or story[at] == "\n"):
            return at
    return len(story)


def subjects(opening: str, nouns: frozenset[str]) -> list[str]:
    """Who or what the opening is about, as a user would name it: "Lily", "a cat", "a little girl
    named Lily", "an old tree"; each occurs in `opening`."""
    found: list[str] = []
    for name in NAMED.findall(opening):
        found.append(name)
    for m in ARTICLE_PHRASE.finditer(opening):
        words = m.group(2).split()
        at = next((i for i, w in enumerate(words) if w in nouns), None)
        if at is None or any(w in NOT_DESCRIBING for w in words[:at]):
            continue
        noun = words[at]
        found.append(f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}")
        if at:
            found.append(" ".join([m.group(1), *words[: at + 1]]))
    for m in re.finditer(rf"\b(an? (?:[a-z]+ ){{0,2}}[a-z]+) {NAMED.pattern}", opening):
        found.append(m.group(0))  # "a little girl named Lily"
    return list(dict.fromkeys(found))


def user_text(template: str, rng: random.Random, **fill: str) -> str:
    """A request as a user might type it: sometimes without its final mark or capital letter."""
    text = template.format(**fill)
    if rng.random() < 0.15:
        text = text.rstrip(".?")
    if rng.random() < 0.1:
        text = text[0].lower() + text[1:]
    return text


def story_dialogues(
    story: str, nouns: frozenset[str], rng: random.Random, s: ChatSettings
) -> list[tuple[str, list[dict]]]:
    """`s.dialogues_per_story` (kind of first request, conversation) made from one story; none
    when the story is too short for a reply."""
    ends = sentence_ends(story)
    if len(ends) < s.min_reply_sentences + 1:
        return []
    opening_end = reply_end(story, 0, s.min_reply_sentences)
    opening = story[:opening_end].strip()
    about = subjects(opening, nouns)
    dialogues = []
    for _ in range(s.dialogues_per_story):
        kind = rng.choices(("about", "plain", "next"), weights=(0.6, 0.2, 0.2))[0]
        if kind == "about" and not about:
            kind = "plain"
        if kind == "next":
            first = story[: ends[0]].strip()
            cursor = reply_end(story, ends[0], s.min_reply_sentences)
            messages = [
                {"role": "user", "content": user_text(rng.choice(NEXT_PROMPTS), rng, s=first)},
                {"role": "assistant", "content": story[ends[0] : cursor].strip()},
            ]
        else:
            template = rng.choice(ABOUT_PROMPTS if kind == "about" else PLAIN_PROMPTS)
            request = user_text(template, rng, x=rng.choice(about)) if kind == "about" else user_text(template, rng)
            messages = [{"role": "user", "content": request}, {"role": "assistant", "content": opening}]
            cursor = opening_end
        # Some conversations go on: "What happens next?" and the story's next paragraph.
        while cursor < len(story) and rng.random() < s.follow_up_rate:
            following = reply_end(story, cursor, s.min_reply_sentences)
            messages.append({"role": "user", "content": rng.choice(FOLLOW_UPS)})
            messages.append({"role": "assistant", "content": story[cursor:following].strip()})
            cursor = following
        dialogues.append((kind, messages))
    return dialogues


def encode_dialogue(
    tokenizer: PreTrainedTokenizerFast, messages: list[dict], max_reply_tokens: int
) -> tuple[list[int], list[int]] | None:
    """(ids, labels) of a conversation: the chat template's ids, labels -100 except on the
    assistant's replies and their `<|im_end|>`. None when a reply is too long or the whole
    does not fit the context.

    Each reply's span is found by templating the conversation up to it (with the assistant's
    header) and up to its end: the first is a prefix of the second, checked.
    """
    ids = template_ids(tokenizer, messages, add_generation_prompt=False)
    if len(ids) > tokenizer.model_max_length:
        return None
    end_id = tokenizer.convert_tokens_to_ids(IM_END)
    labels = [-100] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = template_ids(tokenizer, messages[:i], add_generation_prompt=True)
        through = template_ids(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if ids[: len(through)] != through or through[: len(before)] != before:
            raise ValueError(f"the chat template is not prefix-consistent on {messages[: i + 1]!r}")
        stop = through.index(end_id, len(before)) + 1  # the reply and its <|im_end|>, not the "\n" after
        if stop - len(before) > max_reply_tokens:
            return None
        labels[len(before) : stop] = ids[len(before) : stop]
    return ids, labels


def template_ids(tokenizer: PreTrainedTokenizerFast, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    """The ids the tokenizer's chat template gives `messages`, as chat mode asks for them."""
    ids = tokenizer.apply_chat_template(
        messages,
        add_generation_prompt=add_generation_prompt,
        tokenize=True,
        return_dict=False,
        # Conversations longer than the context are measured and then left out, on purpose:
        # no warning about their length.
        tokenizer_kwargs={"verbose": False},
    )
    return list(ids)


def build_examples(
    stories: Sequence[str], tokenizer: PreTrainedTokenizerFast, nouns: frozenset[str], s: ChatSettings, seed: int
) -> tuple[list[tuple[list[int], list[int]]], Counter]:
    """Encoded dialogues from `stories` (seeded), and counts: of each first request's kind, of
    conversations by turns, and of those left out as too long."""
    rng = random.Random(seed)
    examples: list[tuple[list[int], list[int]]] = []
    kinds: Counter = Counter()  # "about", "plain", "next"; 1, 2, ... (turns); "left out"
    for story in stories:
        for kind, messages in story_dialogues(story, nouns, rng, s):
            encoded = encode_dialogue(tokenizer, messages, s.max_reply_tokens)
            if encoded is None:
                kinds["left out"] += 1
                continue
            examples.append(encoded)
            kinds[kind] += 1
            kinds[len(messages) // 2] += 1
    return examples, kinds


# ---------------------------------------------------------------------------
# Tokenizer and model
# ---------------------------------------------------------------------------


def chat_tokenizer(base: Path) -> PreTrainedTokenizerFast:
    """The base model's tokenizer plus `<|im_start|>` and `<|im_end|>` (special) and ChatML.

    Built from the base's tokenizer.json rather than saved back from `from_pretrained`, so the
    saved tokenizer_config.json holds no load-time options (local paths, offline flags).
    """
    loaded = AutoTokenizer.from_pretrained(base)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(base / "tokenizer.json")),
        bos_token=loaded.bos_token,
        eos_token=loaded.eos_token,
        unk_token=loaded.unk_token,
        model_max_length=loaded.model_max_length,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def chat_model(base: Path, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """The base model with embedding rows for the added tokens, started at the old rows' mean
    and covariance (`mean_resizing`): their logits start where an average token's are."""
    model = AutoModelForCausalLM.from_pretrained(base)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    end_of_text = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    # generate() stops at either: a chat reply ends with <|im_end|>, a story with <|endoftext|>.
    model.generation_config = GenerationConfig(
        bos_token_id=end_of_text,
        eos_token_id=[tokenizer.convert_tokens_to_ids(IM_END), end_of_text],
        pad_token_id=end_of_text,
    )
    return model


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


@dataclass
class ChatSettings:
    """Everything that determines a run (recorded in the model card)."""

    steps: int = 700  # ~1.5 passes over the ~15k training dialogues; ~5 min on one shared core
    batch_size: int = 32
    lr: float = 1e-3  # a third of the base run's peak: the weights are trained already
    min_lr: float = 1e-4
    warmup: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 1337
    threads: int = 1  # on shared, busy cores 2 threads ran a step slower (wall time) than 1
    dialogues_per_story: int = 3
    min_reply_sentences: int = 2  # a reply is at least this many sentences (then to a paragraph's end)
    follow_up_rate: float = 0.3  # chance of each further "What happens next?" turn
    max_reply_tokens: int = 160  # longer replies are left out: "a few sentences"
    limit_stories: int | None = None  # training stories read (None: all)
    eval_stories: int = 300  # valid.txt stories whose dialogues are scored
    eval_generations: int = 100  # of those, greedy replies written and checked


def smoke_settings(s: ChatSettings) -> ChatSettings:
    """A run of seconds for the test suite: a few stories, a few steps, one thread."""
    return replace(s, steps=4, batch_size=4, warmup=2, threads=1, limit_stories=40, eval_stories=8, eval_generations=3)


def lr_at(step: int, s: ChatSettings) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at the last step."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = min(1.0, (step - s.warmup) / max(1, s.steps - s.warmup))
    return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1 + math.cos(math.pi * progress))


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask and labels, each (B, T) int64."""
    width = max(len(ids) for ids, _ in examples)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for ids, labels in examples:
        pad = width - len(ids)
        batch["input_ids"].append(ids + [pad_id] * pad)
        batch["attention_mask"].append([1] * len(ids) + [0] * pad)
        batch["labels"].append(labels + [-100] * pad)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def batches(lengths: Sequence[int], batch_size: int, gen: torch.Generator) -> Iterator[list[int]]:
    """Batches of example indices, without end: each pass over the examples shuffled, then
    grouped by length within windows of 16 batches, the batches shuffled again.

    Dialogues run from ~30 to 256 tokens: in batches drawn at random 44% of the positions a
    step computes are real tokens, in these 93% (measured on the shipped run's dialogues).
    """
    window = batch_size * 16
    while True:
        order = torch.randperm(len(lengths), generator=gen).tolist()
        for at in range(0, len(order), window):
            chunk = sorted(order[at : at + window], key=lambda i: lengths[i])
            groups = [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
            for g in torch.randperm(len(groups), generator=gen).tolist():
                yield groups[g]


def train(
    model: PreTrainedModel, examples: Sequence[tuple[list[int], list[int]]], pad_id: int, s: ChatSettings
) -> list[tuple[int, float]]:
    """AdamW on the replies' tokens; returns (step, smoothed loss) every 25 steps."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=s.lr,
        betas=(0.9, 0.95),
    )
    order = batches([len(ids) for ids, _ in examples], s.batch_size, torch.Generator().manual_seed(s.seed))
    model.train()
    history: list[tuple[int, float]] = []
    smooth: float | None = None
    for step in range(s.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, s)
        picks = next(order)
        total, count = summed_reply_loss(model, collate([examples[i] for i in picks], pad_id))
        loss = total / count
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        smooth = loss.item() if smooth is None else 0.9 * smooth + 0.1 * loss.item()
        if (step + 1) % 25 == 0 or step + 1 == s.steps:
            history.append((step + 1, smooth))
            print(f"step {step + 1}/{s.steps} loss {smooth:.3f}", file=sys.stderr, flush=True)
    model.eval()
    return history


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------


def summed_reply_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(summed loss in nats, number of tokens) over the batch's labelled tokens: the replies.

    Computed here rather than by passing `labels` to the model: the same next-token
    cross-entropy, and the sum lets evaluation weigh every reply token equally across batches.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t + 1
    total = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return total, int((targets != -100).sum())


@torch.no_grad()
def reply_loss(model: PreTrainedModel, examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> float:
    """Mean loss (nats) per reply token over `examples`, in batches of 16."""
    total, count = 0.0, 0
    for at in range(0, len(examples), 16):
        summed, n = summed_reply_loss(model, collate(examples[at : at + 16], pad_id))
        total += summed.item()
        count += n
    return total / count


@torch.no_grad()
def greedy_reply(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, messages: list[dict], max_new_tokens: int = 200
) -> tuple[str, int, bool]:
    """(reply text, tokens written, whether it ended with `<|im_end|>`) of a greedy `generate`."""
    ids = template_ids(tokenizer, messages, add_generation_prompt=True)
    room = min(max_new_tokens, tokenizer.model_max_length - len(ids))
    input_ids = torch.tensor([ids])
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=room)
    new = out[0, len(ids) :].tolist()
    ended = bool(new) and new[-1] == tokenizer.convert_tokens_to_ids(IM_END)
    return tokenizer.decode(new, skip_special_tokens=True), len(new), ended


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    valid: Sequence[str],
    nouns: frozenset[str],
    s: ChatSettings,
) -> dict:
    """Reply loss on dialogues from unseen stories, and how greedy replies to "Tell me a story
    about X." requests made from them end and whether they name X."""
    pad_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    examples, _ = build_examples(valid, tokenizer, nouns, s, seed=s.seed + 1)
    rng = random.Random(s.seed + 2)
    requests = []
    for story in valid:
        about = subjects(story[: reply_end(story, 0, s.min_reply_sentences)], nouns)
        if about and len(requests) < s.eval_generations:
            # "a girl named Lily" names two things; ask for one.
            requests.append(rng.choice([x for x in about if " named " not in x] or about))
    ended, named, lengths = 0, 0, []
    for x in requests:
        text, n, closed = greedy_reply(model, tokenizer, [{"role": "user", "content": f"Tell me a story about {x}."}])
        ended += closed
        lengths.append(n)
        # The request's last word ("cat", "Lily") appears in the reply.
        named += re.search(rf"\b{re.escape(x.split()[-1])}", text, flags=re.IGNORECASE) is not None
    return {
        "dialogues": len(examples),
        "reply_nats_per_token": reply_loss(model, examples, pad_id),
        "requests": len(requests),
        "ended": ended,
        "named": named,
        "mean_reply_tokens": sum(lengths) / max(1, len(lengths)),
        "max_reply_tokens": max(lengths, default=0),
    }


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------


def write_model_card(out: Path, info: dict) -> None:
    """README.md: what the model is, the data credit, the dialogue format, settings, figures, samples."""
    s, ev = info["settings"], info["eval"]
    rows = "\n".join(f"| `{k}` | {v} |" for k, v in s.items())
    counts = info["kinds"]
    requests = ", ".join(f'{counts[k]:,} "{k}"' for k in ("about", "plain", "next"))
    turns = ", ".join(f"{counts[k]:,} of {k}" for k in sorted(k for k in counts if isinstance(k, int)))
    kinds = f"first requests {requests}; turns {turns}; {counts['left out']:,} left out as too long"
    samples = "\n\n".join(
        f"**{prompt!r}** → ({n} tokens{', the last one `<|im_end|>`' if ended else ', no end of turn'})"
        f"\n\n```text\n{text}\n```"
        for prompt, (text, n, ended) in info["samples"].items()
    )
    card = f"""---
license: cdla-sharing-1.0
language: en
library_name: transformers
pipeline_tag: text-generation
tags: [gpt2, tinystories, tokstep, chatml, conversational]
---

# tokstep tinystories-chat ({info["params"] / 1e6:.2f}M parameters)

A tiny ChatML chat model bundled with tokstep, so that chat mode works offline: the bundled
`tinystories` model (a GPT-2 trained from scratch on children's stories) fine-tuned briefly on
dialogues made from those stories. Ask it for a story ("Tell me a story about a cat.", "Tell me
a story.", or give a first sentence and ask "What happens next?"); it answers with a paragraph
of a few sentences and ends its turn with `{IM_END}`. It tells stories and nothing else: it is
a demo of a chat template and an end-of-turn token, not an assistant. In tokstep, choose
`tinystories-chat` in the page's **Model** dropdown, or run
`python app.py --model tinystories-chat`, and use the chat section.

## Chat format

The tokenizer has a ChatML `chat_template` (saved as `chat_template.jinja`); apply it with
`tokenizer.apply_chat_template(messages, add_generation_prompt=True)`:

```text
{IM_START}user
Tell me a story about a cat.{IM_END}
{IM_START}assistant
Once upon a time, ...{IM_END}
```

`{IM_START}` (id {info["im_start_id"]}) and `{IM_END}` (id {info["im_end_id"]}) are added special
tokens. `generation_config.json` stops at either `{IM_END}` or `<|endoftext|>` (eos ids
{info["eos_ids"]}), so `model.generate` ends with the turn.

## Data

Dialogues synthesized from {info["train_stories"]:,} stories of TinyStories' `train-1.txt` +
`train-2.txt` (the first ~5,500 stories of TinyStories-train, the base model's own training data),
{s["dialogues_per_story"]} per story: {info["train_dialogues"]:,} kept ({kinds}). The user asks
"Tell me a story about X." (X a name or a thing from the story's opening: "Lily", "a dog", "a
little red ball"; several wordings, some lower-case or without a final mark), "Tell me a story."
(several wordings), or gives the story's first sentence and asks "What happens next?". The
assistant answers with the story's own text, from where the request leaves it to the first
paragraph break after at least {s["min_reply_sentences"]} sentences (or the story's end); with
probability {s["follow_up_rate"]} the conversation goes on with "What happens next?" (or "Go
on.", ...) and the next such paragraph. Replies over {s["max_reply_tokens"]} tokens and
conversations over the context are left out. Evaluated on dialogues made the same way from the
first {s["eval_stories"]} stories of TinyStories-valid (`valid.txt`), never trained on.

TinyStories: Ronen Eldan and Yuanzhi Li, 2023, "TinyStories: How Small Can Language
Models Be and Still Speak Coherent English?", arXiv:2305.07759. Dataset
`roneneldan/TinyStories` on the Hugging Face Hub, licensed CDLA-Sharing-1.0
(https://cdla.dev/sharing-1-0/). These weights are a result of computation on that
data; the data itself is not included.

## Model

The base model's architecture unchanged: `GPT2LMHeadModel`, {info["n_layer"]} layers,
{info["n_head"]} heads, width {info["n_embd"]}, context {info["context"]} tokens, tied input/output
embeddings; vocabulary {info["vocab_size"]:,} (the base's byte-level BPE plus the two ChatML tokens,
whose embedding rows were added with `resize_token_embeddings`). Parameters: {info["params"]:,}
(weights file {info["weights_bytes"] / 1e6:.2f} MB, fp32).

## Training

| setting | value |
| --- | --- |
{rows}

Every parameter trained; loss on the assistant's tokens only (each reply and its `{IM_END}`),
ids from the tokenizer's own chat template. AdamW (betas 0.9/0.95, weight decay on matrices
only), linear warmup then cosine decay, batches of dialogues drawn with a seeded generator and
right-padded. Training took {info["train_seconds"] / 60:.1f} minutes of wall-clock time
({info["train_cpu_seconds"] / 60:.1f} CPU-minutes over all threads) on {info["machine"]}
(torch {info["torch"]}, transformers {info["transformers"]}). Final smoothed train loss:
{info["final_train_loss"]:.3f} nats per reply token.

## Evaluation

On {ev["dialogues"]:,} dialogues from unseen stories: **{ev["reply_nats_per_token"]:.3f} nats per
reply token** (the base model, which has no ChatML tokens, cannot be scored on them). Greedy
replies to {ev["requests"]} requests "Tell me a story about X." made from those stories (at most
200 new tokens): {ev["ended"]} ended their turn with `{IM_END}`, {ev["named"]} named X (its
last word) in the reply; {ev["mean_reply_tokens"]:.1f} tokens on average, {ev["max_reply_tokens"]} at most.

## Greedy samples

{samples}

## Reproduce

```bash
{info["command"]}
```
"""
    (out / "README.md").write_text(card, encoding="utf-8")


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line interface: the corpus, the output folder and the run's settings."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Data: " + CORPUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--corpus", required=True, help=CORPUS_HELP)
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--base", default=str(BASE_MODEL), help="model folder to fine-tune (default: bundled tinystories)")
    p.add_argument("--smoke", action="store_true", help="a run of seconds (few stories and steps) for tests")
    for f in fields(ChatSettings):
        default = f.default
        kind = int if f.name == "limit_stories" else type(default)
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None, help=f"default {default}")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> ChatSettings:
    """The defaults (or the smoke run's), with what the command line sets on top."""
    s = smoke_settings(ChatSettings()) if args.smoke else ChatSettings()
    given = {f.name: getattr(args, f.name) for f in fields(ChatSettings) if getattr(args, f.name) is not None}
    return replace(s, **given)


def main(argv: list[str] | None = None) -> None:
    """Build the dialogues, fine-tune, evaluate and save the folder with its model card."""
    args = parse_args(argv)
    s = settings_from(args)
    torch.set_num_threads(s.threads)
    random.seed(s.seed)
    torch.manual_seed(s.seed)
    corpus, out, base = Path(args.corpus), Path(args.out), Path(args.base)

    stories = [story for name in TRAIN_FILES for story in read_stories(corpus / name)][: s.limit_stories]
    nouns = story_nouns(stories)
    tokenizer = chat_tokenizer(base)
    examples, kinds = build_examples(stories, tokenizer, nouns, s, seed=s.seed)
    if not examples:
        raise SystemExit(f"no dialogue could be made from the stories in {corpus}")
    print(f"{len(stories)} stories, {len(examples):,} dialogues ({dict(kinds)})", file=sys.stderr)

    model = chat_model(base, tokenizer)
    pad_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    start, cpu_start = time.perf_counter(), time.process_time()
    history = train(model, examples, pad_id, s)
    train_seconds = time.perf_counter() - start
    # CPU seconds of all threads: wall time inflates when other jobs share the cores.
    train_cpu_seconds = time.process_time() - cpu_start

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # The weights come through a temporary file (mode 0600); readable like the other files.
    (out / "model.safetensors").chmod(0o644)

    # Evaluate the *saved* folder, as a user loads it.
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    valid = read_stories(corpus / VALID_FILE)[: s.eval_stories]
    ev = evaluate(model, tokenizer, valid, nouns, s)
    limit = 200 if not args.smoke else 16
    samples = {p: greedy_reply(model, tokenizer, [{"role": "user", "content": p}], limit) for p in CARD_PROMPTS}
    config = model.config
    info = {
        "settings": asdict(s),
        "params": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.n_embd,
        "context": config.n_positions,
        "im_start_id": tokenizer.convert_tokens_to_ids(IM_START),
        "im_end_id": tokenizer.convert_tokens_to_ids(IM_END),
        "eos_ids": model.generation_config.eos_token_id,
        "train_stories": len(stories),
        "train_dialogues": len(examples),
        "kinds": kinds,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "machine": machine_description(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "final_train_loss": history[-1][1],
        "weights_bytes": (out / "model.safetensors").stat().st_size,
        "eval": ev,
        "samples": samples,
        "command": "python scripts/train_chat.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    write_model_card(out, info)
    print(
        f"train {train_seconds / 60:.1f} min, valid reply loss {ev['reply_nats_per_token']:.3f} nats/token, "
        f"{ev['ended']}/{ev['requests']} greedy replies ended, {ev['named']} named their subject"
    )
    for prompt, (text, n, ended) in samples.items():
        print(f"--- {prompt!r} ({n} tokens, {'ended' if ended else 'not ended'})\n{text}")


if __name__ == "__main__":
    main()
