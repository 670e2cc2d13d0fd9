"""The Gradio page: `create_demo(lm)` builds it section by section and wires each event to a handler.

  tokstep.web.page_layout     the sections (model, prompt and buttons, tokens and top-k, share,
                              settings, tables) and `PageUI`, every component in one object
  tokstep.web.page_handlers   Reset, Step, Auto-run, Undo, Stop, a pick, a changed setting or model
  tokstep.web.share_handlers  opening a link, Copy link, Export run, Load a run
  tokstep.web.chat_section    chat mode, a section of its own (`add_chat`)
  tokstep.web.api             /generate
  tokstep.web.client_limits   each client's fair share of /generate and Auto-run (create_demo's `fair_share`)

Handlers are plain functions, bound to the page's `PageUI` and `PageContext` (tokstep.web.bind).
Events take their inputs as a set, so a handler gets one dict keyed by component, and reads the
settings from it with `PageSettings.from_inputs` (tokstep.web.settings), which checks every value;
it returns an update keyed by component. Inputs are taken raw (`preprocess=False`) so that any value
an API client sends gets a clear message; the one exception is loading a run file: Gradio's
preprocessing is what makes sure the path it gets is a file the visitor uploaded.

Per-user state is one `TokenStepper` in a `gr.State` (token ids, steps, KV cache). The model
itself is shared read-only; its passes run in the page's runtime (tokstep.runtimes.in_process),
batched with other sessions', while Auto-run's pauses between tokens overlap freely. The page's
Auto-run, the chat's and /generate step through one run loop (tokstep.core.run_loop).

For teachers: the page opens a preset from its URL (`?prompt=...&steps=N`, see
tokstep.core.presets), "Copy link" gives the link to the current state, and a run exports to and
loads from a JSON file (tokstep.core.run_files).

Model choice: `create_demo(lm, models=[...])` offers `lm` and the operator's allowlist in a
dropdown (tokstep.web.model_choice loads each once and keeps it). Each session's model name is a
gr.State (`model_choice`) that every event reads; visitors can only pick a name on the list.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from tokstep.core.loading import load
from tokstep.core.model import LanguageModel
from tokstep.core.run_files import MAX_RUN_BYTES
from tokstep.runtimes.in_process import InProcessRuntime
from tokstep.web import browser_run
from tokstep.web import page_handlers as handlers
from tokstep.web import share_handlers as sharing
from tokstep.web.api import generate, generate_on_the_one_model, stream_updates
from tokstep.web.assets import JS
from tokstep.web.assets import LAUNCH_OPTIONS as PAGE_OPTIONS
from tokstep.web.bind import bind
from tokstep.web.browser_run import BrowserStorage
from tokstep.web.chat_section import ModelSwitch, add_chat
from tokstep.web.client_limits import ClientLimits, FairShare
from tokstep.web.compare_section import CompareUI, compare_section, wire_compare_import
from tokstep.web.constants import DEFAULT_PROMPT, NOTEBOOK_PROMPT
from tokstep.web.model_choice import ModelCache, allowed_models, chat_models, unavailable_models
from tokstep.web.page_context import PageContext
from tokstep.web.page_handlers import idle_after
from tokstep.web.page_layout import (
    PageUI,
    controls,
    header,
    notebook_tables,
    session_state,
    settings_accordion,
    share_row,
    token_view,
)
from tokstep.web.path_tree_view import PathTreeUI, path_tree_section, wire_path_tree
from tokstep.web.queue_admission import admit_joins
from tokstep.web.rest import LaunchOptions
from tokstep.web.sampling_help import SamplingHelpBoxes
from tokstep.web.stream_route import serve_streams
from tokstep.web.views import legend_html
from tokstep.web.why_section import why_section

__all__ = ["JS", "LAUNCH_OPTIONS", "ServerLimits", "create_demo"]

# "Copy link": the server sends the query ("?prompt=..."); the browser makes it a full link to
# the demo (its root, also inside an iframe or a <gradio-app>) and copies it where allowed.
COPY_LINK_JS = """
(query) => {
  if (!query) { return query; }
  const root = (window.gradio_config && window.gradio_config.root) || (location.origin + location.pathname);
  const url = root.replace(/\\/?$/, "/") + query;
  try { navigator.clipboard.writeText(url).catch(() => {}); } catch (error) { /* no clipboard here */ }
  return url;
}
"""


@dataclass(frozen=True)
class ServerLimits:
    """How much work the server takes at once; past `max_queue` waiting events, users are told
    "Queue is full! Please try again." instead of waiting without end."""

    max_queue: int = 64  # events waiting for a worker, all users together
    autorun_workers: int = 32  # Auto-runs at once (page and chat each): mostly pausing between tokens
    # /generate streams at once. Their steps share batched forward passes (tokstep.runtimes.scheduler),
    # so a class's worth costs about one pass per token; more wait in the queue. One address holds at
    # most FairShare.api_runs of them, so a class of 30 beside one flooding address (4) still fits, with
    # room: a class that waited for a worker would wait for another's whole run. A flood needs 12
    # addresses to fill them; one tab holds at most FairShare.page_runs Auto-runs.
    stream_workers: int = 48
    workers: int = 8  # Steps, resets and the like at once (their passes are batched too)

    @property
    def threads(self) -> int:
        """Threads the server needs so that every event allowed to run at once has one."""
        # /generate's streams twice: through Gradio's queue and on the plain route (tokstep.web.stream_route).
        return 2 * self.autorun_workers + 2 * self.stream_workers + self.workers


# max_file_size: uploads past it are refused by Gradio before they reach tokstep; a little
# above what a run file may be, so a file just over the limit still gets tokstep's own message.
# max_threads: Gradio runs each step of an event in a pool of threads (40 by default); every
# event that may run at once gets one, or streams past the 40th would wait with a free model.
# app_kwargs (added by LaunchOptions): the REST routes fill in left-out arguments and say what is
# wrong with a bad call (tokstep.web.rest).
LAUNCH_OPTIONS = LaunchOptions(
    {**PAGE_OPTIONS, "max_file_size": MAX_RUN_BYTES + 1_000_000, "max_threads": ServerLimits().threads}
)


def create_demo(
    lm: LanguageModel,
    *,
    prompt: str = DEFAULT_PROMPT,
    notice: str | None = None,
    limits: ServerLimits = ServerLimits(),  # noqa: B008 (frozen, so sharing the default is safe)
    models: Sequence[str] | None = None,
    runtime: InProcessRuntime | None = None,
    browser_storage: BrowserStorage = BrowserStorage(),  # noqa: B008 (frozen, so sharing the default is safe)
    fair_share: FairShare = FairShare(),  # noqa: B008 (frozen, so sharing the default is safe)
) -> gr.Blocks:
    """The tokstep page for `lm`. `notice` is shown at the top (e.g. why a fallback model runs).

    `models` are the other models visitors may choose (the operator's allowlist; `lm` is
    always offered, first, and is every session's default). Without it the page offers only
    `lm`, and a run file made with another model loads on `lm` with a warning, as it always did;
    with it, a run file switches to its model when that is offered and is refused otherwise.

    `runtime` runs every model's passes (a new `InProcessRuntime` when not given: one lock and one
    bound on kept caches for the page's models); the page serves `runtime.serve(lm)`, and `lm`
    itself is left as it was.

    `fair_share` is what each client may take: runs at once, tokens a minute, /generate's ceiling
    (tokstep.web.client_limits).

    `browser_storage` is where each tab's browser keeps its run, so that a reload gets it back
    (tokstep.web.browser_run); pin its secret to keep the runs readable across restarts.
    """
    runtime = runtime if runtime is not None else InProcessRuntime()
    lm = runtime.serve(lm)
    allowed = allowed_models(lm.name, models or ())
    cache = ModelCache(
        allowed, loaded=[lm], loader=lambda name: runtime.serve(load(name)),
        unavailable=unavailable_models(allowed, loaded=[lm.name]),
    )  # fmt: skip
    export_folder = Path(tempfile.mkdtemp(prefix="tokstep-exports-"))
    context = PageContext(
        cache, offers_choice=models is not None, export_folder=export_folder, clients=ClientLimits(fair_share)
    )
    with gr.Blocks(title="tokstep: watch a language model write") as demo:
        # First: see tokstep.web.page_layout.
        session = session_state(context.default_model, browser_storage.key, browser_storage.secret)
        model = header(notice, cache.allowed, context.default_model, cache.unavailable)
        buttons = controls(model, prompt)
        view, mode = token_view(buttons, legend_html(lm))
        help_boxes = SamplingHelpBoxes.create()  # rendered in the settings accordion, beside each setting
        ui = PageUI(
            session, buttons, view, share_row(), settings_accordion(mode, help_boxes), notebook_tables(), help_boxes
        )
        why_section(ui)  # "Why this token?": layer by layer and where it looked (closed until asked for)
        paths = path_tree_section()  # "Paths you tried": every branch, and going back to one (closed)
        compare = compare_section(ui, context, limits.autorun_workers)  # "Two models side by side" (closed)
        # Chat mode: the same model, stepping the assistant's reply (closed until asked for).
        with gr.Accordion("Chat mode: step through a chat model's reply", open=False, elem_id="chat-mode"):
            add_chat(
                session.model_choice, context.lm_for, autorun_workers=limits.autorun_workers,
                switch=ModelSwitch(model, chat_models(cache)), tab_runs=context.tab_runs, clients=context.clients,
            )  # fmt: skip
        # Choosing an example changes the prompt box, which starts over (the prompt's change event).
        examples = gr.Examples(
            [[DEFAULT_PROMPT], [NOTEBOOK_PROMPT]], inputs=ui.controls.prompt, label="Example prompts"
        )
        wire_page(demo, ui, context, limits, examples, paths, compare)
        # /generate's schema is its function's signature; a page without a model list has no `model`.
        endpoint = generate if context.offers_choice else generate_on_the_one_model
        gr.api(
            bind(endpoint, context.lm_for, context.clients), api_name="generate",
            concurrency_limit=limits.stream_workers,
        )  # fmt: skip
        # /stream/generate: the same /generate, as many streams at once as Gradio's queue runs of it.
        updates = functools.partial(stream_updates, context.lm_for, context.clients)
        serve_streams(demo, updates, max_streams=limits.stream_workers)
        admit_joins(demo, context.clients)  # /generate past its caller's cap is refused as it joins the queue
    # api_open=False: Gradio's direct routes (/gradio_api/run/<name>, /api/<name>) would run an event
    # beside the queue, past its concurrency limits and its bound on waiting events.
    demo.queue(default_concurrency_limit=limits.workers, max_size=limits.max_queue, api_open=False)
    return demo


def wire_page(
    demo: gr.Blocks,
    ui: PageUI,
    context: PageContext,
    limits: ServerLimits,
    examples: gr.Examples,
    paths: PathTreeUI | None = None,
    compare: CompareUI | None = None,
) -> None:
    """Every event of the page, each to its handler. Events named with `api_name` stay callable by
    API clients (undocumented): tests and benchmarks drive the page through them."""
    session, controls, links = ui.session, ui.controls, ui.share
    view, settings = ui.view_outputs, set(ui.settings.all)
    buttons = [controls.step, controls.autorun]  # Auto-run's running state (after the view: API order)
    tab = {session.state, session.model_choice, controls.prompt}  # what most events read
    raw = {"preprocess": False, "show_progress": "hidden"}
    api = {**raw, "api_visibility": "undocumented"}
    private = {**raw, "api_visibility": "private"}
    parts = (ui, context)  # what every handler is bound to
    # After each event that changes the tab's sequence the browser keeps its run, so that a reload
    # gets it back (tokstep.web.browser_run); Auto-run's at its end. No queue limit: it runs no pass.
    store = {
        "fn": bind(browser_run.on_store, *parts), "inputs": {session.state, *settings}, "outputs": session.stored,
        "concurrency_limit": None, **private,
    }  # fmt: skip

    autorun_event = controls.autorun.click(
        bind(handlers.on_autorun, *parts), inputs={*tab, controls.autorun_tokens, controls.speed, *settings},
        outputs=[*view, *buttons], api_name="autorun", concurrency_limit=limits.autorun_workers, **api,
    )  # fmt: skip
    step_event = controls.step.click(
        bind(handlers.on_step, *parts), inputs={*tab, *settings}, outputs=view, api_name="step", **api
    )
    continue_event = controls.continue_past.click(
        bind(handlers.on_continue, *parts), inputs={*tab, *settings}, outputs=view, api_name="continue", **api
    )
    runs = [autorun_event, step_event, continue_event]
    for run in runs:
        run.then(**store)
    controls.undo.click(
        bind(idle_after(handlers.on_undo), *parts), inputs={*tab, *settings}, outputs=[*view, *buttons],
        api_name="undo", cancels=[autorun_event], **api,
    ).then(**store)  # fmt: skip
    ui.view.topk.select(
        bind(idle_after(handlers.on_pick), *parts), inputs={*tab, *settings}, outputs=[*view, *buttons],
        cancels=[autorun_event], **private,
    ).then(**store)  # fmt: skip
    gr.on(
        [control.change for control in ui.settings.all], bind(handlers.on_view, *parts), inputs={*tab, *settings},
        outputs=view, api_name="view", trigger_mode="always_last", **api,
    ).then(**store)  # fmt: skip
    # Reset, typing and choosing an example stop a running Auto-run or Step, which would
    # otherwise write the old text back.
    controls.reset.click(
        bind(idle_after(handlers.on_start), *parts), inputs={session.model_choice, controls.prompt, *settings},
        outputs=[*view, *buttons], api_name="reset", cancels=runs, trigger_mode="always_last", **api,
    ).then(**store)  # fmt: skip
    # A changed prompt starts over unless a link or a run file set it together with its state.
    # It cancels nothing itself: typing and choosing an example stop a run (below), while the
    # change that a link or a run file makes must not cancel a Step clicked right after it.
    controls.prompt.change(
        bind(idle_after(handlers.on_edit), *parts), inputs={*tab, *settings}, outputs=[*view, *buttons],
        trigger_mode="always_last", **private,
    ).then(**store)  # fmt: skip
    controls.prompt.input(None, cancels=runs)
    # The first load starts from the preset in the page's URL, or the run the tab's browser kept
    # (a reload), or the prompt box.
    demo.load(
        bind(sharing.on_load, *parts), inputs={session.model_choice, session.stored, controls.prompt, *settings},
        outputs=[*view, controls.prompt, *ui.settings.all, ui.view.legend, session.model_choice, controls.model],
        **private,
    ).then(**store)  # fmt: skip
    # A closed tab stops its runs at once: a step waiting for a serving engine is cancelled.
    demo.unload(bind(handlers.on_tab_closed, context))
    # Choosing a model loads it (the status says so) and starts over from the prompt box.
    # `change` fires once per choice, by mouse or keyboard (in Gradio 6.31 `input` fires twice and
    # `select` misses the keyboard). When the page sets the dropdown itself (back after a failed load,
    # to a link's or a run file's model) it fires too, and finds the session on that model already.
    controls.model.change(
        bind(idle_after(handlers.on_model), *parts), inputs={controls.model, *tab, *settings},
        outputs=[*view, *buttons, ui.view.legend, session.model_choice, controls.model], api_name="model",
        api_visibility="undocumented", cancels=runs, preprocess=False, show_progress="minimal",
    ).then(**store)  # fmt: skip
    links.copy_link.click(
        bind(sharing.on_link, *parts), inputs={*tab, *settings}, outputs=links.link, api_name="link", **api
    ).then(None, inputs=links.link, outputs=links.link, js=COPY_LINK_JS)
    # The tab's comparison of two models goes into the file too: its states are inputs, not API arguments.
    sides = (compare.side_a, compare.side_b) if compare is not None else ()
    links.export.click(
        bind(sharing.on_export, *parts, sides), inputs={*tab, *settings, *sides}, outputs=links.export_file,
        api_name="export", **api,
    )  # fmt: skip
    links.export_why.click(
        bind(sharing.on_export_with_views, *parts, sides), inputs={*tab, *settings, *sides},
        outputs=links.export_file, api_name="export_why", **api,
    )  # fmt: skip
    # Preprocessed (unlike the other events) so the path is checked to be an upload.
    imported = links.load.upload(
        bind(sharing.on_import, *parts), inputs=[links.load, session.model_choice, controls.prompt],
        outputs=[*view, controls.prompt, *ui.settings.all, session.model_choice], api_name="import",
        api_visibility="undocumented", cancels=runs, show_progress="hidden",
    )  # fmt: skip
    imported.then(
        # The dropdown follows the run's model; a separate event keeps /import's outputs as they were.
        sharing.model_of_the_tab, inputs=session.model_choice, outputs=controls.model, api_visibility="private",
        show_progress="hidden",
    ).then(**store)  # fmt: skip
    if compare is not None:  # the file's comparison of two models, once the run has loaded
        wire_compare_import(compare, context, imported)
    examples.dataset.click(None, cancels=runs)
    # No queue limit: a class pressing Stop at once is not served one by one.
    controls.stop.click(
        bind(idle_after(handlers.on_stop), *parts), inputs={session.state, *settings}, outputs=[*view, *buttons],
        cancels=[autorun_event],
        concurrency_limit=None, **private,
    ).then(**store)  # fmt: skip
    if paths is not None:  # Go to a node stops Auto-run, as Undo does (tokstep.web.path_tree_view)
        wire_path_tree(paths, ui, context, store, cancels=[autorun_event])
