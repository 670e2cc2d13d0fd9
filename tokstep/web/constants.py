"""The page's numbers and labels, in one place: defaults, ranges, the mode labels, and how long things
are kept. The main page (tokstep.web.page_layout) and the chat section (tokstep.web.chat_layout) lay
their controls out with these, and tokstep.web.settings checks what they send against the same ones."""

from __future__ import annotations

DEFAULT_PROMPT = "Once upon a time"
NOTEBOOK_PROMPT = "Once upon a time, generative models"  # the seed notebook's prompt, an example

# How Step and Auto-run choose: the two values of the page's and the chat's mode radio.
GREEDY, SAMPLE = "Greedy (most likely)", "Sample (seeded)"

DEFAULT_TOP_K, MAX_TOP_K = 5, 20  # candidates shown in the top-k label and table
DEFAULT_AUTORUN_TOKENS, MAX_AUTORUN_TOKENS = 20, 256  # the page's Auto-run
DEFAULT_REPLY_TOKENS, MAX_REPLY_TOKENS = 64, 256  # the chat's Auto-run: most of a short reply
DEFAULT_SPEED = 3.0  # tokens per second: slow enough to read each token as it comes
MIN_SPEED, MAX_SPEED, SPEED_STEP = 0.5, 20.0, 0.5

# The sampling sliders' ranges: a link or a run file may only set what the page can show.
TEMPERATURE_RANGE, SAMPLE_TOP_K_MAX, TOP_P_MIN = (0.1, 2.0), 100, 0.05

STATE_TTL_S = 3600  # a tab closed or idle this long drops its state (seconds since the last update)
EXPORT_TTL_S = 600  # exported files are copied to Gradio's cache at once; ours can go soon after

MAX_PROMPT_CHARS = 100_000  # GPT-2's 1024 tokens are about 4,000 characters of English
