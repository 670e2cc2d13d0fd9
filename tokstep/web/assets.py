"""What the page looks like beyond Gradio's defaults: CSS, a little JavaScript, colours.

Passed to `demo.launch` through LAUNCH_OPTIONS (Gradio 6 takes css and js there).
"""

from __future__ import annotations

# Token chip colours. Gradio draws chips at 50% opacity; these light shades keep dark text
# at WCAG AA contrast (4.5:1) over both the light and the dark theme's background.
PROMPT_COLOR = "#bae6fd"  # sky: a prompt token (not scored)
RANK_COLORS = {  # how likely the model found a token: its rank in the distribution
    "top 1": "#bbf7d0",  # green: the model's first choice
    "top 10": "#fef08a",  # yellow
    "top 100": "#fed7aa",  # orange
    "beyond": "#e9d5ff",  # purple: a surprise to the model
}

# Page styling: solid, dark-on-light token chips in both themes (WCAG AA contrast), visible
# keyboard focus, and touch-sized buttons (44 px, as WCAG 2.5.5 asks) on phones.
CSS = """
#tokens .textfield { line-height: 2.2; }
#tokens .token .text, #tokens .token .label { color: #111 !important; }
#tokens .token .label { text-transform: none !important; }
#status p { margin: 0.25em 0; }
#step, #autorun, #stop, #reset, #undo, .gallery-item, .example { min-height: 44px; }
#legend .chip { color: #111; padding: 0 .4em; border-radius: 4px; white-space: nowrap; }
/* Gradio's orange and red buttons carry white text at about 3:1; these darker shades pass 4.5:1. */
#step { background: #c2410c !important; border-color: #c2410c !important; color: #fff !important; }
#step:hover { background: #9a3412 !important; }
#stop { background: #b91c1c !important; border-color: #b91c1c !important; color: #fff !important; }
#stop:hover { background: #991b1b !important; }
button:focus-visible, textarea:focus-visible, input:focus-visible, [tabindex]:focus-visible {
  outline: 3px solid #2563eb !important; outline-offset: 2px;
}
"""

# Runs once when the page loads: Ctrl+Enter (Cmd+Enter on a Mac) presses Step from anywhere,
# screen readers are told about the shortcut, and the status line is announced as it changes.
JS = """
() => {
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
      const step = document.querySelector("#step");
      if (step && !step.disabled) { event.preventDefault(); step.click(); }
    }
  });
  const mark = () => {
    const step = document.querySelector("#step");
    const status = document.querySelector("#status");
    if (!step || !status) { return false; }
    step.setAttribute("aria-keyshortcuts", "Control+Enter");
    status.setAttribute("aria-live", "polite");
    return true;
  };
  if (!mark()) { const timer = setInterval(() => { if (mark()) { clearInterval(timer); } }, 200); }
}
"""

# What every launch of the page passes to `demo.launch` (Gradio 6 takes css/js there).
# Gradio keeps each session's state (about 0.1 MB here, plus ours) for an hour after its tab
# closes, and API clients never say goodbye: past this many sessions the least recently
# used one is dropped, so memory stays bounded however many visitors come and go.
MAX_SESSIONS = 500
LAUNCH_OPTIONS = {"css": CSS, "js": JS, "state_session_capacity": MAX_SESSIONS}
