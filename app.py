"""tokstep's entry point: `python app.py [--model NAME] [--host H] [--port P] [--share]`.

The model comes from --model, else the TOKSTEP_MODEL environment variable, else "gpt2".
Visitors may switch to the models in TOKSTEP_MODELS (comma-separated; default: gpt2,
distilgpt2, tinystories), each loaded when first chosen; the app's own model is always offered.
`demo` is module-level so the file also runs as a Hugging Face Space.
"""

from __future__ import annotations

import argparse
import os
import sys

from tokstep.core.loading import ModelLoadError
from tokstep.runtimes.allocator import limit_malloc_arenas
from tokstep.web.model_choice import parse_models
from tokstep.web.page import LAUNCH_OPTIONS, create_demo
from tokstep.web.share import launch
from tokstep.web.startup import load_for_app

DEFAULT_MODEL = "gpt2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    # parse_known_args: hosts such as Spaces or `gradio app.py` may pass flags of their own.
    return parser.parse_known_args(argv)[0]


args = parse_args()
limit_malloc_arenas()  # before the server's threads: a class's worth of them multiplies peak memory
try:
    lm, notice = load_for_app(args.model, env_model=os.environ.get("TOKSTEP_MODEL"), default=DEFAULT_MODEL)
except ModelLoadError as error:
    sys.exit(f"tokstep: {error}")
demo = create_demo(lm, notice=notice, models=parse_models(os.environ.get("TOKSTEP_MODELS")))

if __name__ == "__main__":
    launch(demo, host=args.host, port=args.port, share=args.share, options=LAUNCH_OPTIONS)
