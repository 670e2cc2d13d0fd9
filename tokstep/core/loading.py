"""Loading a causal language model: resolve its name, place it with accelerate, fail clearly.

A name is one of three things, tried in this order:
  1. a model bundled with tokstep (a folder under `tokstep/models/`, e.g. "tinystories"),
  2. a local directory holding a Hugging Face model,
  3. a Hugging Face Hub id ("gpt2"), used from the local cache when it is there.

All three go through the same `AutoTokenizer` / `AutoModelForCausalLM.from_pretrained`
code path. Remote code is never run (`trust_remote_code=False`).

Why the Hub is asked first, with a short timeout: when the Hub cannot be reached,
`from_pretrained` retries for about a minute before giving up. One quick metadata
request tells within seconds whether the model exists and the Hub answers, so a wrong
name or a missing network gives a clear error at once.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import huggingface_hub
import torch
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tokstep.core.model import LanguageModel, ModelLoadError
from tokstep.core.tokens import TokenTexts

BUNDLED_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"

# Seconds the Hub has to answer one metadata request before we call it unreachable.
HUB_TIMEOUT_S = 5.0

# Config attributes that hold the number of positions a model reads, by model family.
_CONTEXT_ATTRIBUTES = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length", "max_seq_len")


def bundled_models() -> list[str]:
    """Names of the models shipped inside the package."""
    if not BUNDLED_MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_MODELS_DIR.iterdir() if (p / "config.json").is_file())


def bundled_model_path(name: str) -> Path | None:
    """The folder of a bundled model, or None when `name` is not one."""
    return BUNDLED_MODELS_DIR / name if name in bundled_models() else None


def _is_cached(repo_id: str) -> bool:
    try:
        return isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "config.json"), str)
    except HFValidationError:
        return False


def _env_flag(name: str) -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once, at import.
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def check_hub(repo_id: str, timeout: float = HUB_TIMEOUT_S) -> None:
    """Raise ModelLoadError unless the Hub answers, within `timeout`, that `repo_id` exists."""
    advice = "Check the name, connect to the internet, or pass a local directory that holds the model."
    local = ", ".join(bundled_models()) or "none"
    if huggingface_hub.is_offline_mode() or _env_flag("HF_HUB_OFFLINE"):
        raise ModelLoadError(
            f"Model '{repo_id}' is not in the local Hugging Face cache and offline mode is on "
            f"(HF_HUB_OFFLINE). {advice} Bundled models: {local}."
        )
    try:
        huggingface_hub.model_info(repo_id, timeout=timeout)
    except (RepositoryNotFoundError, HFValidationError):
        raise ModelLoadError(
            f"Model '{repo_id}' is not a bundled model, not a local directory, and not a model "
            f"the Hugging Face Hub knows (or it needs a login). {advice} Bundled models: {local}."
        ) from None
    except Exception as error:  # network errors come from several libraries
        raise ModelLoadError(
            f"Model '{repo_id}' is not in the local Hugging Face cache and the Hub could not be "
            f"reached ({type(error).__name__}). {advice} Bundled models: {local}."
        ) from None


def _default_dtype(device_map: str | None) -> torch.dtype:
    # Half precision halves the bytes read per token on a GPU; CPUs are fastest in fp32.
    if device_map != "cpu" and torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _context_length(model: PreTrainedModel) -> int | None:
    config = model.config.get_text_config()
    for attribute in _CONTEXT_ATTRIBUTES:
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return frozenset()
    return frozenset([eos] if isinstance(eos, int) else eos)


def load(
    name: str,
    *,
    device_map: str | None = "auto",
    dtype: torch.dtype | None = None,
    hub_timeout: float = HUB_TIMEOUT_S,
    engine_url: str | None = None,
    engine_api_key: str | None = None,
) -> LanguageModel:
    """Load a causal LM and its tokenizer by bundled name, local directory or Hub id.

    `device_map="auto"` lets accelerate put the model on a GPU when there is one.
    The dtype defaults to fp32 on CPU and a half type on CUDA. The model is as transformers loads
    it: its passes are direct calls in the caller's thread (`lm.forward`, a DirectForward); a
    server hands it to a runtime of its own (`tokstep.runtimes`).

    With `engine_url` (a vLLM server's OpenAI-compatible API, e.g. "http://127.0.0.1:8000/v1"),
    only the tokenizer and config are loaded here, no weights, and every pass runs in that engine,
    which must serve `name` with the same vocabulary (tokstep.runtimes.engine; EngineError if not).

    >>> lm = load("tinystories")
    >>> lm.model.training
    False
    """
    if engine_url is not None:
        # Imported here: the core knows no HTTP; the engine runtime builds on the loading below.
        from tokstep.runtimes.engine import EngineRuntime

        return EngineRuntime(engine_url, api_key=engine_api_key).load(name, hub_timeout=hub_timeout)
    source, local_only = resolve(name, hub_timeout)
    name = name.strip()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            trust_remote_code=False,
            local_files_only=local_only,
            device_map=device_map,
            dtype=dtype or _default_dtype(device_map),
        )
    except Exception as error:
        raise ModelLoadError(
            f"Model '{name}' could not be loaded from {source}: {str(error).rstrip('.')}. Check that it is a causal "
            "language model in Hugging Face format (config.json, weights and tokenizer files)."
        ) from error
    return from_objects(name, model, tokenizer)


def load_without_weights(name: str, *, hub_timeout: float = HUB_TIMEOUT_S) -> LanguageModel:
    """The tokenizer and config of a model, and the model built on the meta device: no weights
    are read and no memory is taken, but its config, vocabulary size, context length and eos ids
    are there. For a runtime whose passes run elsewhere (a serving engine); `lm.forward` still
    needs one (the direct call would fail on meta tensors).
    """
    source, local_only = resolve(name, hub_timeout)
    name = name.strip()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=local_only)
        config = AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=local_only)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
        # No generation_config.json: the one made from the config stays.
        with contextlib.suppress(OSError):
            model.generation_config = GenerationConfig.from_pretrained(source, local_files_only=local_only)
    except Exception as error:
        raise ModelLoadError(
            f"Model '{name}' (tokenizer and config) could not be loaded from {source}: {str(error).rstrip('.')}. "
            "Check that it is a causal language model in Hugging Face format (config.json and tokenizer files)."
        ) from error
    return from_objects(name, model, tokenizer)


def resolve(name: str, hub_timeout: float = HUB_TIMEOUT_S) -> tuple[str, bool]:
    """Where `name` loads from (a folder or a Hub id) and whether only local files may be used;
    ModelLoadError, within `hub_timeout`, for a name that is none of the three kinds."""
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError("No model name given. Pass a Hub id such as 'gpt2' or a local directory.")
    name = name.strip()
    bundled = bundled_model_path(name)
    if bundled is not None:
        source, local_only = str(bundled), True
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"Folder '{name}' holds no config.json, so it is not a Hugging Face model folder. "
                "Pass a folder saved with save_pretrained (config, weights and tokenizer files)."
            )
        source, local_only = str(folder), True
    elif _is_cached(name):
        source, local_only = name, True
    else:
        check_hub(name, timeout=hub_timeout)
        source, local_only = name, False
    return source, local_only


def from_objects(name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> LanguageModel:
    """Wrap a model and tokenizer already in memory (a notebook's, or a test's); the model is
    put in eval mode and otherwise left as it is."""
    model.eval()
    return LanguageModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        texts=TokenTexts(tokenizer),
        context_length=_context_length(model),
        eos_token_ids=_eos_token_ids(model, tokenizer),
    )
