"""Train and evaluate tokstep's bundled offline model on TinyStories.

Two subcommands:

* ``train`` reads ``train-1.txt`` and ``train-2.txt`` from a corpus folder, trains
  a byte-level BPE tokenizer and a small ``GPT2LMHeadModel`` on them with a fixed
  seed, evaluates it on ``valid.txt`` and writes a Hugging Face model folder
  (config, safetensors weights, tokenizer, generation config, model card).
* ``eval`` reports bits per character (BPC) of a saved model on ``valid.txt``:
  the summed next-token loss (nats) over every validation story, each scored as
  its own sequence after a leading ``<|endoftext|>``, divided by the number of
  characters in those stories and by ln 2.

The corpus text is never copied into the output folder or the repository.

Examples::

    python scripts/train_tiny.py train --corpus ../shared/corpus/tinystories \\
        --out tokstep/models/tinystories
    python scripts/train_tiny.py eval --model tokstep/models/tinystories \\
        --corpus ../shared/corpus/tinystories
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

EOT = "<|endoftext|>"
TRAIN_FILES = ("train-1.txt", "train-2.txt")
VALID_FILE = "valid.txt"
CARD_PROMPTS = ("Once upon a time", "Tom and his dog", "The little bird was sad because")

CORPUS_HELP = (
    "folder holding train-1.txt, train-2.txt and valid.txt (plain text, stories "
    "separated by a blank line). TinyStories is the 'roneneldan/TinyStories' dataset "
    "on the Hugging Face Hub (https://huggingface.co/datasets/roneneldan/TinyStories, "
    "CDLA-Sharing-1.0); its TinyStories-train.txt / TinyStories-valid.txt use "
    "<|endoftext|> lines between stories, so replace those by blank lines first."
)


# ---------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------


def read_stories(path: Path, limit_chars: int | None = None) -> list[str]:
    """Return the stories of one file: blocks separated by blank lines, stripped.

    Paragraph breaks inside a story stay as single "\\n" characters; they are part
    of the text the model learns (and of the characters BPC divides by).
    """
    text = path.read_text(encoding="utf-8")
    if limit_chars is not None:
        text = text[:limit_chars]
    blocks = re.split(r"\n[ \t]*\n", text)
    return [b.strip() for b in blocks if b.strip()]


def read_training_stories(corpus: Path, limit_chars: int | None = None) -> list[str]:
    """Stories from the training files only; valid.txt is never read here."""
    stories: list[str] = []
    for name in TRAIN_FILES:
        stories.extend(read_stories(corpus / name, limit_chars))
    return stories


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------


def train_tokenizer(stories: list[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """Train a GPT-2 style byte-level BPE whose id 0 is ``<|endoftext|>``.

    Byte-level pre-tokenization means every string is encodable (no unknown
    token is ever produced); the 256 byte symbols are always in the vocabulary.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],  # first special token -> id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(stories, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=EOT,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def encode_stream(tokenizer: PreTrainedTokenizerFast, stories: list[str]) -> torch.Tensor:
    """Token ids of ``EOT s1 EOT s2 ... EOT sN EOT`` as one 1-D int64 tensor (N_tok,).

    The separator teaches the model both where a story starts (it always follows
    EOT) and that it should emit EOT when a story is over.
    """
    eot_id = tokenizer.convert_tokens_to_ids(EOT)
    ids: list[int] = [eot_id]
    for encoded in tokenizer(stories, add_special_tokens=False, verbose=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(eot_id)
    return torch.tensor(ids, dtype=torch.long)


# ---------------------------------------------------------------------------
# Model and training
# ---------------------------------------------------------------------------


@dataclass
class TrainSettings:
    """Everything that determines a training run (recorded in the model card)."""

    # Shipped settings. With ~1 hour on 2 CPU cores we are compute-bound, not
    # data-bound: a ~1M-parameter model that sees ~7M tokens beat a 3.5M one that
    # saw 3.4M tokens in the same time (valid BPC 1.2338 for 6 layers x 192 wide,
    # vocab 4096, 420 steps, lr 2e-3), and more steps kept helping: 900 steps gave
    # BPC 1.1162, the checkpoint at step 1500 of a 2000-step run 1.0002.
    vocab_size: int = 2048  # small vocab: cheap output layer, every token well trained
    context: int = 256  # tokens per window; a TinyStories story is ~200 tokens
    n_layer: int = 4
    n_head: int = 4  # head size 32
    n_embd: int = 128
    dropout: float = 0.0  # ~15 passes over the data: valid BPC still falls, no overfitting seen
    batch_size: int = 32  # windows per step: 8192 tokens
    steps: int = 2000  # ~16.4M tokens, ~14.5 epochs of the ~1.13M-token stream; ~37 min on 2 cores
    lr: float = 3e-3  # peak AdamW learning rate (small models tolerate a high one)
    min_lr: float = 3e-4  # cosine decays to this
    warmup: int = 40
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 1337
    threads: int = 2
    limit_chars: int | None = None  # read only the first N chars of each train file (tests)


def build_model(s: TrainSettings, tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    """A GPT-2 with tied input/output embeddings sized by the settings."""
    eot_id = tokenizer.convert_tokens_to_ids(EOT)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=s.context,
        n_embd=s.n_embd,
        n_layer=s.n_layer,
        n_head=s.n_head,
        resid_pdrop=s.dropout,
        embd_pdrop=s.dropout,
        attn_pdrop=s.dropout,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        # No pad_token_id here: EOT occurs inside every training window, and a
        # config pad id makes forward() warn about padding without a mask.
        # generation_config.json carries pad_token_id for generate().
        tie_word_embeddings=True,
        # Same tanh-approximate GELU as GPT-2's "gelu_new", but one fused kernel:
        # measurably faster on CPU.
        activation_function="gelu_pytorch_tanh",
    )
    return GPT2LMHeadModel(config)


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warmup to ``lr`` then cosine decay to ``min_lr`` at the last step."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, s: TrainSettings) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases or LayerNorm gains)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": s.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.95), eps=1e-8)


def sample_batch(stream: torch.Tensor, s: TrainSettings, gen: torch.Generator) -> torch.Tensor:
    """Random windows of ``context + 1`` tokens: (B, T+1); inputs [:, :-1], targets [:, 1:]."""
    starts = torch.randint(0, len(stream) - s.context - 1, (s.batch_size,), generator=gen)
    offsets = torch.arange(s.context + 1)
    return stream[starts[:, None] + offsets[None, :]]  # (B, T+1)


def next_token_loss(model: GPT2LMHeadModel, batch: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) of predicting batch[:, 1:] from batch[:, :-1]."""
    logits = model(input_ids=batch[:, :-1]).logits  # (B, T, vocab)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))


def train_model(
    model: GPT2LMHeadModel,
    stream: torch.Tensor,
    s: TrainSettings,
    checkpoint: Callable[[int], None] | None = None,
    checkpoint_every: int = 0,
) -> list[tuple[int, float]]:
    """Run ``s.steps`` AdamW steps; returns (step, smoothed train loss) every 50 steps.

    ``checkpoint(step)`` is called every ``checkpoint_every`` steps so that a run
    stopped early still leaves a loadable folder.
    """
    gen = torch.Generator().manual_seed(s.seed)
    opt = make_optimizer(model, s)
    model.train()
    history: list[tuple[int, float]] = []
    smooth = None
    bar = tqdm(range(s.steps), desc="train", unit="step", dynamic_ncols=True)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, s)
        loss = next_token_loss(model, sample_batch(stream, s, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        bar.set_postfix(loss=f"{smooth:.3f}", lr=f"{lr_at(step, s):.2e}")
        if (step + 1) % 50 == 0 or step + 1 == s.steps:
            history.append((step + 1, smooth))
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
            model.eval()
            checkpoint(step + 1)
            model.train()
    model.eval()
    return history


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------


@torch.no_grad()
def story_token_losses(model: GPT2LMHeadModel, ids: list[int], stride: int) -> torch.Tensor:
    """Loss (nats, float64) of every token of ``ids`` after the first: shape (len(ids) - 1,).

    ``ids`` starts with EOT, which is context only. Sequences longer than the
    model's context are scored in windows of ``n_positions`` tokens that advance
    by ``stride``; each window scores only the tokens not scored before, so every
    token is scored exactly once with at least ``n_positions - stride`` tokens of
    left context (or all of them, near the start).
    """
    n_ctx = model.config.n_positions
    if not 0 < stride < n_ctx:
        # A window starting at the first unscored token would have no context for it.
        raise ValueError(f"stride must be in 1..{n_ctx - 1}, got {stride}")
    seq = torch.tensor(ids, dtype=torch.long)
    pieces: list[torch.Tensor] = []
    scored_until = 1  # positions < scored_until are already scored (position 0 never is)
    begin = 0
    while scored_until < len(seq):
        end = min(begin + n_ctx, len(seq))
        window = seq[begin:end][None, :]  # (1, W)
        logits = model(input_ids=window).logits[0, :-1].double()  # (W-1, vocab)
        logp = torch.log_softmax(logits, dim=-1)
        targets = window[0, 1:]  # (W-1,): row j predicts position begin + j + 1
        per_token = -logp.gather(1, targets[:, None])[:, 0]  # (W-1,)
        first_new = scored_until - begin - 1  # row that predicts position scored_until
        pieces.append(per_token[first_new:])
        scored_until = end
        begin += stride
    return torch.cat(pieces)


def evaluate_bpc(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizerFast,
    stories: list[str],
    stride: int | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Bits per character over ``stories``, each its own sequence after a leading EOT."""
    model.eval()
    eot_id = tokenizer.convert_tokens_to_ids(EOT)
    stride = stride or model.config.n_positions // 2
    nats = 0.0
    chars = 0
    tokens = 0
    for story in tqdm(stories, desc="eval", unit="story", disable=not progress):
        # verbose=False: long stories exceed model_max_length on purpose (sliding window)
        ids = [eot_id] + tokenizer(story, add_special_tokens=False, verbose=False)["input_ids"]
        nats += story_token_losses(model, ids, stride).sum().item()
        chars += len(story)
        tokens += len(ids) - 1
    return {
        "bpc": nats / chars / math.log(2),
        "nats_per_token": nats / tokens,
        "stories": len(stories),
        "characters": chars,
        "tokens": tokens,
        "stride": stride,
    }


@torch.no_grad()
def greedy_continuation(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, prompt: str, max_new_tokens: int = 80
) -> str:
    """The prompt followed by the model's greedy continuation (stops at EOT)."""
    inputs = tokenizer(prompt, return_tensors="pt")
    room = model.config.n_positions - inputs["input_ids"].shape[1]  # learned positions end here
    out = model.generate(**inputs, do_sample=False, max_new_tokens=min(max_new_tokens, room))  # (1, T)
    return tokenizer.decode(out[0], skip_special_tokens=True)


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------


def save_folder(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    """Write config, safetensors weights, tokenizer files and generation config."""
    out.mkdir(parents=True, exist_ok=True)
    eot_id = tokenizer.convert_tokens_to_ids(EOT)
    model.generation_config = GenerationConfig(bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (the tied embedding counted once)."""
    return sum(p.numel() for p in model.parameters())


def write_model_card(out: Path, info: dict) -> None:
    """README.md with data credit, settings, figures and greedy samples."""
    s = info["settings"]
    ev = info["eval"]
    samples = "\n\n".join(f"**{p!r}** →\n\n```text\n{text}\n```" for p, text in info["samples"].items())
    settings_rows = "\n".join(f"| `{k}` | {v} |" for k, v in s.items())
    card = f"""---
license: cdla-sharing-1.0
language: en
library_name: transformers
pipeline_tag: text-generation
tags: [gpt2, tinystories, tokstep]
---

# tokstep tinystories ({info["params"] / 1e6:.2f}M parameters)

A tiny GPT-2 trained from scratch on children's stories, bundled with tokstep so
the demo works offline. It writes simple English stories and ends them with
`{EOT}` (token id {info["eot_id"]}, also used as bos/pad/unk).

## Data

Trained on the first ~5,500 stories of TinyStories (`train-1.txt` + `train-2.txt`,
{info["train_stories"]:,} stories, {info["train_chars"]:,} characters,
{info["train_tokens"]:,} tokens with separators); evaluated on the first 800
stories of TinyStories-valid (`valid.txt`), which was never trained on.

TinyStories: Ronen Eldan and Yuanzhi Li, 2023, "TinyStories: How Small Can Language
Models Be and Still Speak Coherent English?", arXiv:2305.07759. Dataset
`roneneldan/TinyStories` on the Hugging Face Hub, licensed CDLA-Sharing-1.0
(https://cdla.dev/sharing-1-0/). These weights are a result of computation on that
data; the data itself is not included.

## Model

`GPT2LMHeadModel`: {s["n_layer"]} layers, {s["n_head"]} heads, width {s["n_embd"]},
context {s["context"]} tokens, vocabulary {info["vocab_size"]} (byte-level BPE trained
on the same training stories), tied input/output embeddings.
Parameters: {info["params"]:,} (weights file {info["weights_bytes"] / 1e6:.2f} MB, fp32).

## Training

| setting | value |
| --- | --- |
{settings_rows}

AdamW (betas 0.9/0.95, weight decay on matrices only), linear warmup then cosine
decay, random windows of `context + 1` tokens from the stream
`{EOT} story {EOT} story ...`, fixed seed. Training took
{info["train_seconds"] / 60:.1f} minutes of wall-clock time
({info["train_cpu_seconds"] / 60:.1f} CPU-minutes over all threads) on {info["machine"]}
(torch {info["torch"]}, transformers {info["transformers"]}). Final smoothed train
loss: {info["final_train_loss"]:.3f} nats/token.

## Evaluation

Bits per character on `valid.txt`: **{ev["bpc"]:.4f}** ({ev["stories"]} stories,
{ev["characters"]:,} characters, {ev["tokens"]:,} tokens,
{ev["nats_per_token"]:.4f} nats/token). Each story is scored as its own sequence
after a leading `{EOT}` (so its first token is scored too); stories longer than
the context are scored with a sliding window of stride {ev["stride"]}. The closing
`{EOT}` is not scored. BPC = summed loss in nats / characters / ln 2.

Reproduce:

```bash
python scripts/train_tiny.py eval --model tokstep/models/tinystories --corpus ../shared/corpus/tinystories
```

## Greedy samples

{samples}

## Reproduce training

```bash
{info["command"]}
```
"""
    (out / "README.md").write_text(card, encoding="utf-8")


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def machine_description() -> str:
    """A short description of the CPU and thread count used."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} CPU thread(s), no GPU"


def command_train(args: argparse.Namespace) -> None:
    """Train tokenizer + model, evaluate, save the folder and the model card."""
    s = TrainSettings(**{k: getattr(args, k) for k in TrainSettings.__dataclass_fields__})
    torch.set_num_threads(s.threads)
    random.seed(s.seed)
    torch.manual_seed(s.seed)
    corpus, out = Path(args.corpus), Path(args.out)

    stories = read_training_stories(corpus, s.limit_chars)
    tokenizer = train_tokenizer(stories, s.vocab_size, s.context)
    stream = encode_stream(tokenizer, stories)
    print(f"{len(stories)} stories, {len(stream):,} tokens, vocab {len(tokenizer)}", file=sys.stderr)

    model = build_model(s, tokenizer)
    params = count_parameters(model)
    print(f"{params:,} parameters", file=sys.stderr)

    def checkpoint(step: int) -> None:
        save_folder(model, tokenizer, out)
        (out / "checkpoint.json").write_text(json.dumps({"step": step}))

    start, cpu_start = time.perf_counter(), time.process_time()
    history = train_model(model, stream, s, checkpoint, args.checkpoint_every)
    train_seconds = time.perf_counter() - start
    # CPU seconds of all threads: wall time inflates when other jobs share the cores.
    train_cpu_seconds = time.process_time() - cpu_start
    (out / "checkpoint.json").unlink(missing_ok=True)
    save_folder(model, tokenizer, out)

    # Evaluate the *saved* folder, exactly as the eval command does.
    model, tokenizer = load_folder(out)
    valid = read_stories(corpus / VALID_FILE, args.eval_limit_chars)
    ev = evaluate_bpc(model, tokenizer, valid)
    samples = {p: greedy_continuation(model, tokenizer, p) for p in CARD_PROMPTS}

    info = {
        "settings": asdict(s),
        "params": params,
        "vocab_size": len(tokenizer),
        "eot_id": tokenizer.convert_tokens_to_ids(EOT),
        "train_stories": len(stories),
        "train_chars": sum(len(x) for x in stories),
        "train_tokens": len(stream),
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "machine": machine_description(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "final_train_loss": history[-1][1],
        "weights_bytes": (out / "model.safetensors").stat().st_size,
        "eval": ev,
        "samples": samples,
        "command": "python scripts/train_tiny.py " + " ".join(sys.argv[1:]),
    }
    write_model_card(out, info)
    print(f"train {train_seconds / 60:.1f} min, valid BPC {ev['bpc']:.4f}")
    for p, text in samples.items():
        print(f"--- {p!r}\n{text}")


def load_folder(folder: Path) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """Load a saved model folder in eval mode."""
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder)


def command_eval(args: argparse.Namespace) -> None:
    """Print the validation BPC of a saved model folder."""
    torch.set_num_threads(args.threads)
    model, tokenizer = load_folder(Path(args.model))
    valid = read_stories(Path(args.corpus) / VALID_FILE, args.eval_limit_chars)
    ev = evaluate_bpc(model, tokenizer, valid, args.stride)
    print(
        f"valid BPC {ev['bpc']:.4f} ({ev['stories']} stories, {ev['characters']} characters, "
        f"{ev['tokens']} tokens, {ev['nats_per_token']:.4f} nats/token, stride {ev['stride']})"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line interface: ``train`` and ``eval`` subcommands."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Data: " + CORPUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    d = TrainSettings()

    t = sub.add_parser("train", help="train tokenizer + model and save a HF folder")
    t.add_argument("--corpus", required=True, help=CORPUS_HELP)
    t.add_argument("--out", required=True, help="output model folder")
    for name, default in asdict(d).items():
        if name == "limit_chars":
            continue
        t.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    t.add_argument(
        "--limit-chars",
        type=int,
        default=None,
        help="read only the first N characters of each training file (smoke tests)",
    )
    t.add_argument(
        "--checkpoint-every",
        type=int,
        default=150,
        help="save the folder every N steps so a stopped run leaves a model (0: never)",
    )
    t.add_argument(
        "--eval-limit-chars",
        type=int,
        default=None,
        help="score only the first N characters of valid.txt (smoke tests)",
    )

    e = sub.add_parser("eval", help="report bits per character on valid.txt")
    e.add_argument("--model", required=True, help="saved model folder")
    e.add_argument("--corpus", required=True, help=CORPUS_HELP)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--stride", type=int, default=None, help="sliding-window stride (default n_positions/2)")
    e.add_argument(
        "--eval-limit-chars",
        type=int,
        default=None,
        help="score only the first N characters of valid.txt (smoke tests)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point: dispatch to the chosen subcommand."""
    args = parse_args(argv)
    if args.command == "train":
        command_train(args)
    else:
        command_eval(args)


if __name__ == "__main__":
    main()
