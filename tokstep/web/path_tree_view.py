"""The page's "Paths you tried" section: the tree of every path taken from the prompt, and going back
to any of them (`path_tree_section`, wired by `wire_path_tree`).

Undo and a pick keep the path they leave (tokstep.core.path_tree: every TokenStepper owns its
tree). This section draws that tree as an indented list: each node's token (whitespace drawn,
escaped), the model's probability of it there, its rank and how it was chosen (greedy, picked,
sampled); at each fork one line compares the tokens tried at that position, most likely first. The
current path is marked in text (● and "← you are here"), not by colour alone.

Going back: choose a node in the "Node to go to" list and press "Go to this node". By keyboard: Tab to
the list, type the node's number as the drawing shows it ("node 12 "), its position or part of its
token (the list shows the options that match), arrow keys to move, Enter; then Tab, Enter. That stops
a running Auto-run, as Undo does, and puts the node's path back exactly: its token ids and its Step
records as they were (tokstep.core.path_tree.jump); the page then shows it as after any step, and the
browser keeps it.

Cost: nothing on a Step's path. The tree is drawn when the section is opened, and while it is open
after each change of the token chips (a listener that runs in the browser only, and sends nothing
while the section is closed: it presses a hidden refresh button when the section is open).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.components import Component

from tokstep.core.path_tree import ROOT, PathError, PathNode, PathTree, jump, tree_of
from tokstep.core.stepper import Step, TokenStepper
from tokstep.core.tokens import visible_whitespace
from tokstep.web.bind import bind
from tokstep.web.page_context import PageContext
from tokstep.web.page_handlers import Update, idle_after, tab_stepper
from tokstep.web.page_layout import PageUI
from tokstep.web.settings import PageSettings
from tokstep.web.views import inline_code, render

TITLE = "Paths you tried"
INTRO = (
    "Undo and picking another token keep the path you leave: every path you tried from this prompt stays here. "
    "At each fork the tokens tried there are compared: the model's probability of each, its rank, and how it "
    "was chosen. Choose a node and press **Go to this node** to put its path back exactly as it was."
)
HOW_CHOSEN = {"greedy": "greedy", "user": "picked", "sampled": "sampled"}
NO_SEQUENCE = "<p class='paths-note'>No tokens yet: type a prompt.</p>"
PROMPT_SHOWN_CHARS = 60  # the root's line shows the prompt's end: a pasted page would fill the section

# Scoped to the component (gr.HTML's css_template). Colours from the theme's variables, so both themes
# keep their contrast; the current path also carries ● and bold text, never colour alone.
PATHS_CSS = """
.paths-scroll { max-height: 28em; overflow: auto; overflow-wrap: anywhere; }
.paths-scroll p, .paths-scroll li { font-size: var(--text-md); line-height: 1.6; }
.paths-scroll:focus-visible { outline: 2px solid var(--color-accent); outline-offset: 2px; }
.paths-note, .paths-legend { margin: 0.3em 0; }
ul.paths-chain, ul.paths-branches { list-style: none; margin: 0; padding: 0; }
ul.paths-branches { padding-left: 1.1em; border-left: 2px solid var(--border-color-primary); margin-left: 0.35em; }
li.paths-node { padding: 1px 4px; border-radius: 4px; }
li.paths-node.on-path { background: var(--background-fill-secondary); font-weight: 600; }
li.paths-node code, p.paths-compare code { font-family: var(--font-mono); font-size: 0.95em; white-space: pre-wrap; }
.paths-meta { font-weight: 400; font-size: 0.85em; }  /* the body's colour: the subdued one is under 4.5:1 */
.paths-here { color: var(--body-text-color); }
li.paths-fork { margin: 0.2em 0 0.1em; }
p.paths-compare { margin: 0.15em 0; font-style: italic; }
"""
# Presses the hidden refresh button when the token chips change and the section is open; nothing else.
REFRESH_WHEN_OPEN_JS = """
() => {
  const go = document.querySelector("#paths-go");
  const open = go && (go.checkVisibility ? go.checkVisibility() : go.offsetParent !== null);
  const refresh = document.querySelector("#paths-refresh");
  if (open && refresh) { refresh.click(); }
}
"""


@dataclass(frozen=True)
class PathTreeUI:
    """The section's components."""

    accordion: gr.Accordion
    tree: gr.HTML  # the drawing
    node: gr.Dropdown  # which node to go to; values "<tree name>:<node key>"
    go: gr.Button
    refresh: gr.Button  # hidden: the browser presses it (REFRESH_WHEN_OPEN_JS)


def path_tree_section() -> PathTreeUI:
    """Build the section (collapsed) inside the current gr.Blocks; `wire_path_tree` wires it."""
    with gr.Accordion(TITLE, open=False, elem_id="paths") as accordion:
        gr.Markdown(INTRO, elem_id="paths-intro")
        tree = gr.HTML(NO_SEQUENCE, elem_id="paths-tree", css_template=PATHS_CSS, js_on_load=None)
        node = gr.Dropdown(
            choices=[], value=None, label="Node to go to", elem_id="paths-node", interactive=True,
            info="Type a node's number (“node 12 ”), its position or its token to find it, arrow keys to move, "
            "Enter to choose it. Yours is marked “you are here”.",
        )  # fmt: skip
        go = gr.Button("Go to this node", elem_id="paths-go", variant="secondary")
        refresh = gr.Button("Refresh the paths", elem_id="paths-refresh", visible="hidden")
    return PathTreeUI(accordion, tree, node, go, refresh)


def wire_path_tree(
    paths: PathTreeUI, ui: PageUI, context: PageContext, store: dict[str, Any], cancels: Sequence[Any]
) -> None:
    """The section's events: draw on opening and (while open) on each change of the chips, and Go to.

    `store` is the page's event that keeps the tab's run in the browser (tokstep.web.page.wire_page),
    run after Go to as after every event that changes the sequence; `cancels` are the events Go to
    stops (the page's Auto-run, as Undo stops it)."""
    session, controls = ui.session, ui.controls
    shown = [paths.tree, paths.node]
    private = {"preprocess": False, "show_progress": "hidden", "api_visibility": "private"}
    draw = {"fn": bind(on_draw, ui, paths), "inputs": {session.state}, "outputs": shown, "concurrency_limit": None}
    paths.accordion.expand(**draw, **private)
    paths.refresh.click(**draw, trigger_mode="always_last", **private)
    ui.view.tokens.change(None, js=REFRESH_WHEN_OPEN_JS)  # in the browser only: see the module's docstring
    settings = set(ui.settings.all)
    paths.go.click(
        bind(idle_after(on_go_to), ui, context, paths),
        inputs={session.state, session.model_choice, controls.prompt, paths.node, *settings},
        outputs=[*ui.view_outputs, controls.step, controls.autorun, *shown], cancels=list(cancels), **private,
    ).then(**store)  # fmt: skip


def percent(prob: float) -> str:
    """A probability as the top-k shows it: "41.2%", "0.4%", "<0.1%" (never a bare 0%)."""
    return "<0.1%" if prob < 0.0005 else f"{prob:.1%}"


def token_text(step: Step) -> str:
    return visible_whitespace(step.token)


def node_value(tree: PathTree, key: int) -> str:
    """The dropdown's value for a node: the tree's name too, so a choice made on an old tree (before
    a Reset, a new prompt or model) is not taken for a node of the new one."""
    return f"{tree.name}:{key}"


def node_label(stepper: TokenStepper, node: PathNode, current: int) -> str:
    """A node in the "Node to go to" list: its number, position, token and numbers."""
    if node.step is None:
        label = f"node {node.key} · the prompt ({stepper.prompt_length} tokens)"
    else:
        step = node.step
        label = (
            f"node {node.key} · position {step.position}: {token_text(step)} "
            f"({percent(step.prob)}, #{step.rank}, {HOW_CHOSEN[step.chosen_by]})"
        )
    return label + (" · you are here" if node.key == current else "")


def node_choices(stepper: TokenStepper, tree: PathTree, nodes: list[PathNode], current: int) -> list[tuple[str, str]]:
    return [(node_label(stepper, node, current), node_value(tree, node.key)) for node in nodes]


def compare_line(tried: list[Step]) -> str:
    """One fork's comparison: the tokens tried at one position (siblings), most likely first, e.g.
    "At position 7, 2 tokens tried: ␣the 41.0% (greedy) · ␣a 12.0% (picked)"."""
    listed = " · ".join(
        f"<code>{html.escape(token_text(step))}</code> {percent(step.prob)} ({HOW_CHOSEN[step.chosen_by]})"
        for step in tried
    )
    return f"At position {tried[0].position}, {len(tried)} tokens tried: {listed}"


def node_line(stepper: TokenStepper, node: PathNode, on_path: bool, current: int) -> str:
    """One node's line of the drawing."""
    mark = "●" if on_path else "○"
    here = " <strong class='paths-here'>← you are here</strong>" if node.key == current else ""
    classes = "paths-node on-path" if on_path else "paths-node"
    if node.step is None:
        prompt = stepper.prompt_text
        shown = prompt if len(prompt) <= PROMPT_SHOWN_CHARS else "…" + prompt[-PROMPT_SHOWN_CHARS:]
        body = f"the prompt: <code>{html.escape(shown)}</code> <span class='paths-meta'>node {node.key}</span>"
    else:
        step = node.step
        body = (
            f"<code>{html.escape(token_text(step))}</code> {percent(step.prob)} · #{step.rank:,} · "
            f"{HOW_CHOSEN[step.chosen_by]} <span class='paths-meta'>position {step.position} · node {node.key}</span>"
        )
    return f"<li class='{classes}'><span aria-hidden='true'>{mark}</span> {body}{here}</li>"


def tree_html(stepper: TokenStepper, tree: PathTree, nodes: list[PathNode], current: int) -> str:
    """The tree as nested lists: a path goes on at one level until it forks; a fork gets a line that
    compares its tokens, then one indented list per branch. Built without recursion (a tree of many
    forks would pass Python's recursion limit)."""
    by_key = {node.key: node for node in nodes}
    on_path = set(tree.path_keys(current))
    forks = sum(1 for node in nodes if len(node.children) > 1)
    out = [
        "<div class='paths-scroll' tabindex='0' role='region' aria-label='Paths you tried'>",
        f"<p class='paths-legend'>{len(nodes) - 1} generated tokens in all, {forks} "
        f"{'fork' if forks == 1 else 'forks'}. ● your path now · ○ another path you tried · "
        "#n: the token's rank among the model's choices there.</p>",
    ]
    stack: list[str | int] = [ROOT]  # a node key starts a path's list; a string is closing markup
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        node = by_key[item]
        out.append("<ul class='paths-chain'>")
        while True:
            out.append(node_line(stepper, node, node.key in on_path, current))
            if len(node.children) != 1:
                break
            node = by_key[node.children[0]]
        if len(node.children) < 2:
            out.append("</ul>")
            continue
        children = [by_key[key] for key in node.children]
        tried = [child.step for child in children if child.step is not None]  # only the root has none
        out.append(f"<li class='paths-fork'><p class='paths-compare'>{compare_line(tried)}</p>")
        out.append("<ul class='paths-branches'>")
        stack.append("</ul></li></ul>")
        for child in reversed(children):  # popped in order: the most likely branch first
            stack.extend(["</li>", child.key, "<li>"])
    out.append("</div>")
    return "".join(out)


def drawn(paths: PathTreeUI, stepper: TokenStepper | None) -> Update:
    """The section's update for the tab's stepper (None: no sequence)."""
    if stepper is None:
        return {paths.tree: NO_SEQUENCE, paths.node: gr.Dropdown(choices=[], value=None)}
    tree, current = tree_of(stepper)
    nodes = tree.nodes()
    return {
        paths.tree: tree_html(stepper, tree, nodes, current),
        paths.node: gr.Dropdown(choices=node_choices(stepper, tree, nodes, current), value=node_value(tree, current)),
    }


def on_draw(ui: PageUI, paths: PathTreeUI, values: dict[Component, Any]) -> Update:
    """Draw the tab's tree of paths."""
    return drawn(paths, values[ui.session.state])


def chosen_key(tree: PathTree, value: Any) -> int | None:
    """The node key in a dropdown value made by `node_value` for this tree, or None."""
    if not isinstance(value, str) or ":" not in value:
        return None
    name, _, key = value.rpartition(":")
    return int(key) if name == tree.name and key.isdigit() else None


def on_go_to(ui: PageUI, context: PageContext, paths: PathTreeUI, values: dict[Component, Any]) -> Update:
    """Go to the chosen node: stop a running Auto-run (as Undo does), then put its path back exactly."""
    settings = PageSettings.from_inputs(values)
    stepper = values[ui.session.state]
    if stepper is None:  # no sequence yet (or it expired): start from the prompt box, nothing to go to
        try:
            stepper = tab_stepper(ui, context, values)
        except gr.Error:
            return {ui.view.status: "No tokens yet: type a prompt."}
    stepper.stop_runs()  # no step of a running Auto-run may land after the jump
    key = chosen_key(stepper.paths, values[paths.node])
    if key is None:
        gr.Warning("Choose a node of the tree first (the list under the paths).")
        note = "Choose a node in **Node to go to**, then press **Go to this node**."
        return {**ui.show(render(stepper, settings, note)), **drawn(paths, stepper)}
    try:
        steps = jump(stepper, key)
    except (PathError, ValueError) as error:  # a node trimmed meanwhile; a path past the context
        gr.Warning(str(error))
        return {**ui.show(render(stepper, settings, f"⚠️ {error}")), **drawn(paths, stepper)}
    if steps:
        last = steps[-1]
        note = (
            f"Went to node {key}: the path ending in {inline_code(token_text(last))} (position {last.position}), "
            f"{len(steps)} generated tokens, each as it was. The path you left stays in **{TITLE}**."
        )
    else:
        note = f"Went back to the prompt. Every path you tried stays in **{TITLE}**."
    return {**ui.show(render(stepper, settings, note)), **drawn(paths, stepper)}
