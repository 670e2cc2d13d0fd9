"""tokstep's entry point: `python app.py [--model NAME] [--host H] [--port P] [--share]`.

The model comes from --model, else the TOKSTEP_MODEL environment variable, else "gpt2".
Visitors may switch to the models in TOKSTEP_MODELS (comma-separated; default: gpt2,
distilgpt2, tinystories), each loaded when first chosen; the app's own model is always offered.
The models' passes run batched in this process (tokstep.runtimes.in_process), with the serving
side's process tweaks on unless switched off (tokstep.web.deployment).
`demo` is module-level so the file also runs as a Hugging Face Space.
"""

from __future__ import annotations

import argparse
import os
import sys

from tokstep.core.model import ModelLoadError
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
    lm, notice = load_for_app(args.model, env_model=os.environ.get("TOKSTEP_MODEL"), default=DEFAULT_MODEL)
except ModelLoadError as error:
    sys.exit(f"tokstep: {error}")
demo = create_demo(
    lm, notice=notice, models=parse_models(os.environ.get("TOKSTEP_MODELS")), runtime=server_runtime(tweaks)
)

if __name__ == "__main__":
    launch(demo, host=args.host, port=args.port, share=args.share, options=LAUNCH_OPTIONS)
