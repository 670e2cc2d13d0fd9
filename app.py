"""tokstep's entry point: `python app.py [--model NAME] [--host H] [--port P] [--share]`.

The model comes from --model, else the TOKSTEP_MODEL environment variable, else "gpt2".
Visitors may switch to the models in TOKSTEP_MODELS (comma-separated; default: gpt2,
distilgpt2, tinystories, tinystories-chat), each loaded when first chosen; the app's own model is always offered.
The models' passes run batched in this process (tokstep.runtimes.in_process), with the serving
side's process tweaks on unless switched off (tokstep.web.deployment). With --engine-url (or
TOKSTEP_ENGINE_URL) they run in a serving engine instead (tokstep.runtimes.engine): the page then
offers the model the engine serves, and only that one.
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
from tokstep.web.deployment import Tweaks, apply_process_tweaks, server_runtime
from tokstep.web.model_choice import parse_models
from tokstep.web.page import LAUNCH_OPTIONS, create_demo
from tokstep.web.share import launch
from tokstep.web.startup import load_for_app

DEFAULT_MODEL = "gpt2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    try:
        tweaks = Tweaks.from_env()
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
    # parse_known_args: hosts such as Spaces or `gradio app.py` may pass flags of their own.
    return parser.parse_known_args(argv)[0]


args = parse_args()
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
demo = create_demo(lm, notice=notice, models=models, runtime=runtime)

if __name__ == "__main__":
    launch(demo, host=args.host, port=args.port, share=args.share, options=LAUNCH_OPTIONS)
