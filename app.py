"""tokstep's entry point: `python app.py [--model NAME] [--host H] [--port P] [--share]`.

The model comes from --model, else the TOKSTEP_MODEL environment variable, else "gpt2".
Visitors may switch to the models in TOKSTEP_MODELS (comma-separated; default: gpt2,
distilgpt2, tinystories, tinystories-chat), each loaded when first chosen; the app's own model is always offered.
The models' passes run batched in this process (tokstep.runtimes.in_process), with the serving
side's process tweaks on unless switched off (tokstep.web.deployment). With --engine-url (or
TOKSTEP_ENGINE_URL) they run in a serving engine instead (tokstep.runtimes.engine): the page then
offers the model the engine serves, and only that one.
Each client's fair share (tokstep.web.client_limits: runs at once, tokens a minute, /generate's
ceiling, whether a proxy's X-Forwarded-For names the caller) comes from its flags, else the
TOKSTEP_MAX_API_RUNS, TOKSTEP_MAX_PAGE_RUNS, TOKSTEP_TOKENS_PER_MINUTE, TOKSTEP_MAX_API_TOKENS and
TOKSTEP_TRUST_FORWARDED_FOR environment variables.
Each tab's browser keeps its run for a reload (tokstep.web.browser_run), under --browser-state-key
and encrypted with --browser-state-secret (TOKSTEP_BROWSER_STATE_KEY, TOKSTEP_BROWSER_STATE_SECRET).
`demo` is module-level so the file also runs as a Hugging Face Space.
"""

from __future__ import annotations

import argparse
import os
import sys

from tokstep.core.model import ModelLoadError
from tokstep.runtimes.engine import EngineRuntime

# Before any model loads: on a ZeroGPU Space, importing `spaces` (here) readies torch for its GPU calls.
from tokstep.runtimes.zerogpu import ZeroGPURuntime, on_zero_gpu
from tokstep.web.api import EngineAppError
from tokstep.web.browser_run import KEY_ENV, SECRET_ENV, BrowserStorage
from tokstep.web.client_limits import FairShare
from tokstep.web.deployment import Tweaks, apply_process_tweaks, server_runtime
from tokstep.web.model_choice import parse_models
from tokstep.web.page import LAUNCH_OPTIONS, create_demo
from tokstep.web.share import launch
from tokstep.web.startup import load_for_app

DEFAULT_MODEL = "gpt2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    try:
        tweaks = Tweaks.from_env()
        share = FairShare.from_env()
    except ValueError as error:
        sys.exit(f"tokstep: {error}")
    parser = argparse.ArgumentParser(description="Watch a language model write, one token at a time.")
    parser.add_argument(
        "--model",
        default=None,
        help=f"bundled model name, local directory or Hugging Face Hub id (default: $TOKSTEP_MODEL or {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--host", default=os.environ.get("GRADIO_SERVER_NAME"), help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--share", action="store_true", help="also open a temporary public gradio link")
    parser.add_argument(
        "--engine-url",
        default=os.environ.get("TOKSTEP_ENGINE_URL") or None,
        help="run every pass in a serving engine (vLLM's OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1) "
        "instead of in this process; only the tokenizer and config load here (default: $TOKSTEP_ENGINE_URL)",
    )
    parser.add_argument(
        "--engine-api-key",
        default=os.environ.get("TOKSTEP_ENGINE_API_KEY") or None,
        help="the engine's API key, for an endpoint that needs one (default: $TOKSTEP_ENGINE_API_KEY)",
    )
    parser.add_argument(
        "--pack-weights",
        action=argparse.BooleanOptionalAction,
        default=tweaks.pack_weights,
        help="lay large fp32 CPU linear layers out for oneDNN once (default on; $TOKSTEP_PACK_WEIGHTS=0 turns it off)",
    )
    parser.add_argument(
        "--malloc-arenas",
        type=int,
        default=tweaks.malloc_arenas,
        help="at most this many glibc malloc arenas, 0 for glibc's default (default: $TOKSTEP_MALLOC_ARENAS or 2)",
    )
    parser.add_argument(
        "--mark-absent",
        action=argparse.BooleanOptionalAction,
        default=tweaks.mark_absent_modules,
        help="mark optional packages Gradio looks for on every event as absent (default on; $TOKSTEP_MARK_ABSENT=0)",
    )
    storage = BrowserStorage.from_env()
    parser.add_argument(
        "--browser-state-key",
        default=storage.key,
        help=f"the localStorage key each tab keeps its run under, for a reload (default: ${KEY_ENV} or {storage.key})",
    )
    parser.add_argument(
        "--browser-state-secret",
        default=storage.secret,
        help=f"the secret tabs' stored runs are encrypted with; pin it (better: ${SECRET_ENV}) so that they survive "
        "a restart (default: a new one at each start)",
    )
    add_fair_share_arguments(parser, share)
    # parse_known_args: hosts such as Spaces or `gradio app.py` may pass flags of their own.
    return parser.parse_known_args(argv)[0]


def add_fair_share_arguments(parser: argparse.ArgumentParser, share: FairShare) -> None:
    """Each client's fair share (tokstep.web.client_limits; docs/deploy.md, "Fair share per client")."""
    limits = parser.add_argument_group("fair share per client (0: no limit)")
    limits.add_argument(
        "--max-api-runs", type=int, default=share.api_runs,
        help=f"/generate streams at once per caller's address (default: $TOKSTEP_MAX_API_RUNS or {share.api_runs})",
    )  # fmt: skip
    limits.add_argument(
        "--max-page-runs", type=int, default=share.page_runs,
        help="Auto-runs at once per tab, the page's and the chat's "
        f"(default: $TOKSTEP_MAX_PAGE_RUNS or {share.page_runs})",
    )  # fmt: skip
    limits.add_argument(
        "--tokens-per-minute", type=int, default=share.tokens_per_minute,
        help="tokens a minute per client, over all its runs; a run takes what it asks for when it starts "
        f"(default: $TOKSTEP_TOKENS_PER_MINUTE or {share.tokens_per_minute})",
    )  # fmt: skip
    limits.add_argument(
        "--max-api-tokens", type=int, default=share.max_api_tokens,
        help="the most max_new_tokens one /generate run may ask for "
        f"(default: $TOKSTEP_MAX_API_TOKENS or {share.max_api_tokens})",
    )  # fmt: skip
    limits.add_argument(
        "--trust-forwarded-for", action=argparse.BooleanOptionalAction, default=share.trust_forwarded_for,
        help="behind a proxy that sets X-Forwarded-For (a Space, a load balancer): the caller is its first hop "
        "(default off; $TOKSTEP_TRUST_FORWARDED_FOR=1)",
    )  # fmt: skip


def fair_share_of(args: argparse.Namespace) -> FairShare:
    """The FairShare the arguments set; one line naming the flag, and exit, for a bad value."""
    counts = {
        "--max-api-runs": args.max_api_runs, "--max-page-runs": args.max_page_runs,
        "--tokens-per-minute": args.tokens_per_minute, "--max-api-tokens": args.max_api_tokens,
    }  # fmt: skip
    for flag, value in counts.items():
        if value < 0:
            sys.exit(f"tokstep: {flag} must be a whole number of 0 or more (0: no limit), got {value}.")
    return FairShare(
        api_runs=args.max_api_runs, page_runs=args.max_page_runs, tokens_per_minute=args.tokens_per_minute,
        max_api_tokens=args.max_api_tokens, trust_forwarded_for=args.trust_forwarded_for,
    )  # fmt: skip


args = parse_args()
fair_share = fair_share_of(args)
tweaks = Tweaks(pack_weights=args.pack_weights, malloc_arenas=args.malloc_arenas, mark_absent_modules=args.mark_absent)
apply_process_tweaks(tweaks)  # before the server's threads: see tokstep.web.deployment
try:
    if args.engine_url:
        # A serving engine runs the passes: the model it serves (checked), and only that one on the page.
        runtime = EngineRuntime(args.engine_url, api_key=args.engine_api_key, error_type=EngineAppError)
        lm, notice, models = runtime.load(args.model or os.environ.get("TOKSTEP_MODEL")), None, None
    elif on_zero_gpu():
        # A ZeroGPU Space: each pass in a spaces.GPU call. ZeroGPU moves only the models placed at
        # start-up into its calls, so the page offers the app's model alone (TOKSTEP_MODELS is not read).
        runtime = ZeroGPURuntime()
        lm, notice = load_for_app(args.model, env_model=os.environ.get("TOKSTEP_MODEL"), default=DEFAULT_MODEL)
        lm, models = runtime.serve(lm), None
    else:
        runtime = server_runtime(tweaks)
        lm, notice = load_for_app(args.model, env_model=os.environ.get("TOKSTEP_MODEL"), default=DEFAULT_MODEL)
        models = parse_models(os.environ.get("TOKSTEP_MODELS"))
except ModelLoadError as error:
    sys.exit(f"tokstep: {error}")
browser_storage = BrowserStorage(key=args.browser_state_key, secret=args.browser_state_secret or None)
demo = create_demo(
    lm, notice=notice, models=models, runtime=runtime, browser_storage=browser_storage, fair_share=fair_share
)

if __name__ == "__main__":
    launch(demo, host=args.host, port=args.port, share=args.share, options=LAUNCH_OPTIONS)
