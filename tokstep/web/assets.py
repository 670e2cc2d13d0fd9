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
#step, #autorun, #stop, #reset, #undo, #continue, #chat-switch, #why-update, #paths-go, .gallery-item, .example,
#copy-link, #export, #export-why, #import {
  min-height: 44px;
}
#legend .chip { color: #111; padding: 0 .4em; border-radius: 4px; white-space: nowrap; }
/* Gradio's orange and red buttons carry white text at about 3:1; these darker shades pass 4.5:1. */
#step { background: #c2410c !important; border-color: #c2410c !important; color: #fff !important; }
#step:hover { background: #9a3412 !important; }
#stop { background: #b91c1c !important; border-color: #b91c1c !important; color: #fff !important; }
#stop:hover { background: #991b1b !important; }
/* One compact row of buttons. On a phone it stays at the bottom of the screen, under the thumb, while
   the page scrolls (fixed: Gradio's containers clip overflow, which keeps `sticky` from sticking). */
#buttons { gap: 6px; flex-wrap: wrap; }
#buttons button { flex: 1 1 auto; }
@media (max-width: 640px) {
  #buttons {
    position: fixed; left: 0; right: 0; bottom: 0; z-index: 50; margin: 0; padding: 6px 10px;
    background: var(--background-fill-primary); border-top: 1px solid var(--border-color-primary);
  }
  #buttons button { padding: 0 12px; flex: 1 1 auto; white-space: nowrap; }  /* two rows, sized by their words */
  .gradio-container { padding-bottom: 130px !important; }  /* the page's end stays above the buttons */
  h1 { font-size: 1.5em !important; }
}
/* Byte tokens that make one character together (marked by the page's script): one frame around them. */
.token.byte-group { outline: 2px dashed #7c3aed; outline-offset: 1px; }
.tokstep-sr-only {
  position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap;
}
/* gr.Label repeats its first candidate as a large headline above the list: the list says it already. */
#topk h2[data-testid="label-output-value"], #chat-topk h2[data-testid="label-output-value"] { display: none; }
#topk, #chat-topk { padding-top: 30px !important; }  /* room under the block's label, where the headline was */
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
  // gr.Label rounds each candidate to a whole percent, so a 0.4% token reads "0%". Its bar (a
  // <meter>) holds the exact probability: write that with enough digits, for screen readers too.
  const percent = (p) => (p < 0.001 ? "<0.1%" : `${(100 * p).toFixed(p < 0.1 ? 1 : 0)}%`);
  const honest = () => {
    for (const meter of document.querySelectorAll("#topk meter, #chat-topk meter")) {
      const shown = percent(Number(meter.value));
      const cell = meter.parentElement && meter.parentElement.querySelector(".confidence");
      // Rewrite Gradio's own text node (not the cell's content), so its next update lands where we look.
      const text = cell && (cell.firstChild || cell.appendChild(document.createTextNode("")));
      if (text && text.nodeValue !== shown) { text.nodeValue = shown; }
      if (meter.getAttribute("aria-valuetext") !== shown) { meter.setAttribute("aria-valuetext", shown); }
    }
  };
  // Byte tokens (GPT-2 splits 🍣 into pieces shown as "\xf0\x9f..."): consecutive ones that make one
  // character are framed together, and say so on hover, on focus and to screen readers.
  const describe = (id, text) => {
    let note = document.getElementById(id);
    if (!note) {
      note = document.createElement("span");
      note.id = id;
      note.className = "tokstep-sr-only";
      document.body.appendChild(note);
    }
    if (note.textContent !== text) { note.textContent = text; }
  };
  const bytesOf = (text) => {
    const match = text.match(/^␣?((?:\\\\x[0-9a-f]{2})+)$/i);
    return match ? match[1].match(/[0-9a-f]{2}/gi).map((hex) => parseInt(hex, 16)) : null;
  };
  const groupBytes = () => {
    for (const box of document.querySelectorAll("#tokens, #chat-tokens")) {
      const chips = [...box.querySelectorAll(".token")];
      let run = [];
      let bytes = [];
      const mark = (chip, group) => {
        const key = group ? group.key : "";
        if ((chip.dataset.byteGroup || "") === key) { return; }
        chip.classList.remove("byte-group", "byte-group-first", "byte-group-last");
        chip.removeAttribute("title"); chip.removeAttribute("aria-describedby"); chip.removeAttribute("tabindex");
        delete chip.dataset.byteGroup;
        if (!group) { return; }
        chip.dataset.byteGroup = key;
        chip.classList.add("byte-group");
        if (group.first) { chip.classList.add("byte-group-first"); }
        if (group.last) { chip.classList.add("byte-group-last"); }
        chip.title = group.text;
        chip.setAttribute("aria-describedby", group.id);
        chip.tabIndex = 0;
      };
      const grouped = new Map();
      chips.forEach((chip, index) => {
        const piece = bytesOf((chip.querySelector(".text") || chip).textContent.trim());
        if (!piece) { run = []; bytes = []; return; }
        run.push(index); bytes.push(...piece);
        try {
          const character = new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array(bytes));
          if (run.length > 1) {
            const id = `${box.id}-bytes-${run[0]}`;
            const text = `these ${run.length} byte tokens together make ${character.trim() || character}`;
            describe(id, text);
            run.forEach((at, n) => grouped.set(at, {
              key: `${id}:${n}:${text}`, id, text, first: n === 0, last: n === run.length - 1,
            }));
          }
          run = []; bytes = [];
        } catch (error) { /* not a whole character yet: the next byte token may finish it */ }
      });
      chips.forEach((chip, index) => mark(chip, grouped.get(index)));
    }
  };
  const observe = () => { honest(); groupBytes(); };
  // A new probability changes the bar's width (its style) even when the rounded text stays the same.
  new MutationObserver(observe).observe(document.body, {
    subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ["style"],
  });
}
"""

# What every launch of the page passes to `demo.launch` (Gradio 6 takes css/js there).
# Gradio keeps each session's state (about 0.1 MB here, plus ours) for an hour after its tab
# closes, and API clients never say goodbye: past this many sessions the least recently
# used one is dropped, so memory stays bounded however many visitors come and go.
MAX_SESSIONS = 500
LAUNCH_OPTIONS = {"css": CSS, "js": JS, "state_session_capacity": MAX_SESSIONS}
