"""Tests of scripts/train_tiny.py and of the bundled model it produced.

* A smoke run of the training script (tiny model, tiny vocabulary, a slice of the
  corpus, a few steps) whose output folder must load with the Auto* classes and
  whose model card figure the ``eval`` subcommand must reproduce.
* Checks of the shipped ``tokstep/models/tinystories`` folder: it loads without a
  single warning, its weights fit the size budget, and its greedy story is English.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train_tiny.py"
CORPUS = REPO.parent / "shared" / "corpus" / "tinystories"
SHIPPED = REPO / "tokstep" / "models" / "tinystories"
MAX_WEIGHT_BYTES = 20 * 1000 * 1000

needs_corpus = pytest.mark.skipif(
    not (CORPUS / "train-1.txt").is_file(),
    reason=f"TinyStories corpus not found at {CORPUS} (CI keeps it in shared/ beside the repo)",
)

# Words a children's story cannot avoid. A model that learned English puts a large
# share of its words in this list; one that emits random tokens does not.
_COMMON_WORDS_TEXT = """a about after all always and are around as asked at away back be because big
    but by came can could day did do dog down each every felt find for friend friends
    from fun get girl go going good got had happy has have he her him his home i
    if in into is it its just know like little lily look looked lot loved made make
    many mom more my named new next not now of on once one or other out park play
    played playing ran said sad saw see she so some started still than that the their
    them then there they thing things this time to together too tree up upon very
    want wanted was we went were what when who will wanted with would yes you your"""
COMMON_WORDS = frozenset(_COMMON_WORDS_TEXT.split())


def run_script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the training script in a fresh interpreter (as a user would)."""
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def words_of(text: str) -> list[str]:
    """Lower-case alphabetic words (apostrophes kept: "didn't")."""
    return re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())


def load_cleanly(folder: Path) -> str:
    """Load ``folder``, generate a few tokens, with warnings as errors; return stderr.

    Runs in a subprocess so that transformers' logger (which writes to stderr and
    is not a ``warnings`` warning) is seen too. Progress bars are switched off:
    they are not warnings.
    """
    code = (
        "import sys\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "inputs = tok('Once upon a time', return_tensors='pt')\n"
        "model.generate(**inputs, do_sample=False, max_new_tokens=5)\n"
        "model(**inputs)\n"
    )
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code, str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_help_says_where_to_get_tinystories() -> None:
    result = run_script("--help")
    assert result.returncode == 0, result.stderr
    assert "roneneldan/TinyStories" in result.stdout


@needs_corpus
def test_smoke_training_run_writes_a_loadable_folder(tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = run_script(
        "train",
        "--corpus",
        str(CORPUS),
        "--out",
        str(out),
        "--limit-chars",
        "60000",
        "--vocab-size",
        "400",
        "--n-layer",
        "1",
        "--n-head",
        "2",
        "--n-embd",
        "32",
        "--context",
        "64",
        "--batch-size",
        "4",
        "--steps",
        "6",
        "--warmup",
        "2",
        "--threads",
        "1",
        "--checkpoint-every",
        "3",
        "--eval-limit-chars",
        "8000",
    )
    assert result.returncode == 0, result.stderr

    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "README.md",
    ):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint.json").exists()  # removed once training finished

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    text = 'Tom said, "Look!"\nThe zebra ate 3 apples. Café?'
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: lossless
    assert model.config.vocab_size == len(tok) == 400
    assert model.config.eos_token_id == model.config.bos_token_id == tok.eos_token_id
    assert tok.convert_ids_to_tokens(tok.eos_token_id) == "<|endoftext|>"
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == gen["pad_token_id"] == tok.eos_token_id
    assert model.config.n_layer == 1 and model.config.n_embd == 32

    # The eval command reproduces the model card's figure, digit for digit.
    result = run_script(
        "eval", "--model", str(out), "--corpus", str(CORPUS), "--threads", "1", "--eval-limit-chars", "8000"
    )
    assert result.returncode == 0, result.stderr
    bpc = re.search(r"valid BPC (\S+)", result.stdout).group(1)
    assert math.isfinite(float(bpc)) and 0 < float(bpc) < 8.5  # a byte costs <= 8 bits when learned
    card = (out / "README.md").read_text()
    assert f"**{bpc}**" in card
    assert "arXiv:2305.07759" in card and "https://cdla.dev/sharing-1-0/" in card


@needs_corpus
def test_eval_scores_every_story_token_once() -> None:
    """Sliding windows score each target once; with room, exactly as one full pass."""
    sys.path.insert(0, str(SCRIPT.parent))
    import train_tiny

    torch.manual_seed(0)
    s = train_tiny.TrainSettings(vocab_size=300, context=32, n_layer=1, n_head=2, n_embd=16)
    stories = train_tiny.read_training_stories(CORPUS, limit_chars=3000)
    tok = train_tiny.train_tokenizer(stories, s.vocab_size, s.context)
    model = train_tiny.build_model(s, tok).eval()
    ids = [tok.eos_token_id] + tok(" ".join(stories), verbose=False)["input_ids"][:99]  # 100

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids[:32]])).logits[0, :-1]  # (31, vocab)
        full = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:32]), reduction="none")
    with pytest.raises(ValueError):
        train_tiny.story_token_losses(model, ids, stride=32)  # first new token would lack context
    for stride in (1, 8, 16, 31):
        losses = train_tiny.story_token_losses(model, ids, stride)
        assert losses.shape == (99,)  # every target after the leading EOT, once
        assert torch.isfinite(losses).all()
        # The first window sees the whole prefix: identical to a plain forward pass.
        torch.testing.assert_close(losses[:31].float(), full, rtol=1e-5, atol=1e-5)
    # A context as long as the story needs no window at all.
    short = ids[:20]
    torch.testing.assert_close(train_tiny.story_token_losses(model, short, 16).float(), full[:19], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# The shipped model
# ---------------------------------------------------------------------------

needs_shipped = pytest.mark.skipif(
    not (SHIPPED / "model.safetensors").is_file(), reason=f"no bundled model at {SHIPPED}"
)


@needs_shipped
def test_shipped_model_loads_without_warnings() -> None:
    assert load_cleanly(SHIPPED) == ""


@needs_shipped
def test_shipped_model_fits_the_size_budget() -> None:
    assert (SHIPPED / "model.safetensors").stat().st_size <= MAX_WEIGHT_BYTES
    model = AutoModelForCausalLM.from_pretrained(SHIPPED)
    tok = AutoTokenizer.from_pretrained(SHIPPED)
    assert model.config.vocab_size == len(tok)
    card = (SHIPPED / "README.md").read_text()
    assert "CDLA-Sharing-1.0" in card and "arXiv:2305.07759" in card


@needs_shipped
def test_shipped_model_writes_english() -> None:
    tok = AutoTokenizer.from_pretrained(SHIPPED)
    model = AutoModelForCausalLM.from_pretrained(SHIPPED).eval()
    inputs = tok("Once upon a time", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=60)  # (1, T)
    text = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    words = words_of(text)
    assert len(words) >= 15, text
    common = sum(w in COMMON_WORDS for w in words) / len(words)
    assert common >= 0.5, f"only {common:.0%} common English words in: {text!r}"
    if (CORPUS / "train-1.txt").is_file():
        known = set(words_of((CORPUS / "train-1.txt").read_text(encoding="utf-8")))
        known |= set(words_of((CORPUS / "train-2.txt").read_text(encoding="utf-8")))
        seen = sum(w in known for w in words) / len(words)
        assert seen >= 0.9, f"only {seen:.0%} of words occur in the training stories: {text!r}"
