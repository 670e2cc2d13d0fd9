"""The tree of paths (tokstep.core.path_tree) on the real tiny model: Undo and picks keep the path
they leave as a branch, jumping to any node puts its path back exactly (compared with a fresh
stepper stepped the same way), run files carry the tree and restore it (tokstep.core.run_branches),
and a run file without it loads as before. tests/test_path_tree_browser.py drives the page's section."""

from __future__ import annotations

import copy
import html
import json
import re
from pathlib import Path

import pytest
import torch

from tokstep.core.model import LanguageModel
from tokstep.core.path_tree import MAX_BRANCH_NODES, ROOT, PathError, PathTree, jump, tree_of
from tokstep.core.run_files import RunFileError, dumps_run, export_run, parse_run, restore_run
from tokstep.core.sampling import SamplingSettings
from tokstep.core.stepper import Step, TokenStepper
from tokstep.core.tokens import visible_whitespace
from tokstep.web.browser_run import read_stored_run, stored_run
from tokstep.web.model_choice import ModelCache
from tokstep.web.page_context import PageContext
from tokstep.web.path_tree_view import compare_line, node_choices, tree_html
from tokstep.web.settings import PageSettings

PROMPT = "Once upon a time"
SEEDED = SamplingSettings(temperature=1.3, top_p=0.95, seed=5)


def third(stepper: TokenStepper) -> int:
    """A token a student might click: the third most likely, so not the greedy one."""
    return stepper.next_top(3)[0][2].token_id


def fresh_along(lm: LanguageModel, steps: list[Step]) -> TokenStepper:
    """A new stepper stepped token by token as `steps` were: greedy, a pick, or the same seeded draw."""
    fresh = TokenStepper.from_text(lm, PROMPT)
    for step in steps:
        if step.chosen_by == "greedy":
            made = fresh.step(len(step.top))
        elif step.chosen_by == "sampled":
            made = fresh.step(len(step.top), sampling=step.sampling)
        else:
            made = fresh.step(len(step.top), token_id=step.token_id, sampling=step.sampling)
        assert made.token_id == step.token_id
    return fresh


def assert_same_state(stepper: TokenStepper, fresh: TokenStepper, k: int = 10) -> None:
    """The same ids and Step records, and the same next distribution (to float rounding: the jump
    reads the positions it does not share with the path it left in one pass)."""
    assert stepper.ids == fresh.ids
    assert stepper.steps == fresh.steps  # Step equality leaves out the timing
    top, rest = stepper.next_top(k)
    fresh_top, fresh_rest = fresh.next_top(k)
    assert [c.token_id for c in top] == [c.token_id for c in fresh_top]
    assert [c.prob for c in top] == pytest.approx([c.prob for c in fresh_top], abs=1e-6)
    assert rest == pytest.approx(fresh_rest, abs=1e-6)
    assert torch.allclose(stepper.next_token_probs(), fresh.next_token_probs(), rtol=0, atol=1e-6)


def paths_of(tree: PathTree) -> dict[tuple[int, ...], Step]:
    """Every node of the tree as its path of token ids -> its Step."""
    found = {}
    for node in tree.nodes():
        if node.step is not None:
            found[tuple(step.token_id for step in tree.steps_to(node.key))] = node.step
    return found


def branching_run(lm: LanguageModel) -> tuple[TokenStepper, list[Step], list[Step]]:
    """Three greedy steps, two Undos, a pick and a seeded draw: the first path (greedy) and the
    second (forks after the first token) as their Steps."""
    stepper = TokenStepper.from_text(lm, PROMPT)
    first = [stepper.step() for _ in range(3)]
    stepper.undo()
    stepper.undo()
    second = [first[0], stepper.step(token_id=third(stepper)), stepper.step(sampling=SEEDED)]
    return stepper, first, second


@pytest.fixture(params=["direct", "batched"])
def lm(request, tiny_lm: LanguageModel, served_lm: LanguageModel) -> LanguageModel:
    """The tiny model called directly (a notebook) and through the page's batched runtime."""
    return tiny_lm if request.param == "direct" else served_lm


def test_undo_and_a_pick_keep_the_path_they_leave_as_a_branch(lm):
    stepper, first, second = branching_run(lm)
    tree, current = tree_of(stepper)
    assert tree.steps_to(current) == second == stepper.steps
    ids = lambda steps: tuple(step.token_id for step in steps)  # noqa: E731
    assert paths_of(tree) == {ids(steps[:n]): steps[n - 1] for steps in (first, second) for n in (1, 2, 3)}
    assert len(tree) == 5  # the first token is shared
    # The fork after the first token: both tokens tried there, the model's most likely first, with
    # the probability, rank and how each was chosen that the Step records hold.
    fork = tree.node(tree.node(ROOT).children[0])
    assert fork.step == first[0]
    tried = [tree.node(key).step for key in fork.children]
    assert tried == sorted([first[1], second[1]], key=lambda step: -step.prob)
    assert [step.chosen_by for step in (first[1], second[1])] == ["greedy", "user"]
    assert first[1].rank == 1 and second[1].rank == 3
    assert first[1].prob > second[1].prob
    # Its comparison line on the page says the same, in the same order.
    line = compare_line(tried)
    assert f"At position {first[1].position}, 2 tokens tried" in line
    assert line.index("(greedy)") < line.index("(picked)")


def test_stepping_the_same_token_again_adds_no_node_and_keeps_the_newest_record(tiny_lm):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    greedy = stepper.step()
    stepper.undo()
    picked = stepper.step(token_id=greedy.token_id)  # the same token, picked by hand this time
    tree, current = tree_of(stepper)
    assert len(tree) == 1
    assert tree.node(current).step == picked and picked.chosen_by == "user"


def test_jumping_puts_each_path_back_exactly_as_a_fresh_stepper_steps_it(lm):
    stepper, first, second = branching_run(lm)
    tree, _ = tree_of(stepper)
    by_path = {tuple(s.token_id for s in tree.steps_to(n.key)): n.key for n in tree.nodes()[1:]}
    # Every node, in an order that moves across branches, up to the root and back down.
    for steps in (first, first[:2], second, first[:1], [], second[:2], first):
        key = by_path[tuple(step.token_id for step in steps)] if steps else ROOT
        assert jump(stepper, key) == steps
        assert_same_state(stepper, fresh_along(lm, steps))
        assert tree_of(stepper)[1] == key  # the node jumped to is the current one
    assert len(tree) == 5, "jumping adds nothing and takes nothing away"
    # After a jump the stepper goes on as the fresh one does: the same seeded draw, the same greedy
    # token, the same numbers (to float rounding, as after a re-read of a released cache).
    fresh = fresh_along(lm, first)
    for sampling in (SEEDED, None):
        step, expected = stepper.step(sampling=sampling), fresh.step(sampling=sampling)
        assert (step.token_id, step.rank, step.chosen_by) == (expected.token_id, expected.rank, expected.chosen_by)
        assert [c.token_id for c in step.top] == [c.token_id for c in expected.top]
        assert step.prob == pytest.approx(expected.prob, abs=1e-6)
    assert len(tree_of(stepper)[0]) == 7


def test_a_jump_to_a_node_the_tree_does_not_hold_is_refused_and_changes_nothing(tiny_lm):
    stepper, _, second = branching_run(tiny_lm)
    for key in (999, -1, True):
        with pytest.raises(PathError, match="no node"):
            jump(stepper, key)
    assert stepper.steps == second
    with pytest.raises(ValueError, match="position"):
        stepper.go_to(second[1:])  # Steps that do not follow the prompt position by position


def test_jumping_to_the_current_node_keeps_the_cache(tiny_lm):
    stepper, _, second = branching_run(tiny_lm)
    stepper.next_top(5)  # the newest token is in the KV cache now
    fed: list[int] = []
    hook = tiny_lm.model.transformer.wte.register_forward_hook(lambda _m, args, _o: fed.append(args[0].shape[1]))
    try:
        jump(stepper, tree_of(stepper)[1])
        stepper.next_top(5)
        # Going to an ancestor reads one token again (as Undo does); going down a branch reads its own.
        jump(stepper, tree_of(stepper)[0].path_keys(tree_of(stepper)[1])[1])
        stepper.next_top(5)
    finally:
        hook.remove()
    assert fed == [1]
    assert stepper.steps == second[:1]


def test_old_branches_are_trimmed_from_their_tips_and_the_current_path_never(tiny_lm):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    stepper.paths = PathTree(max_branch_nodes=3)
    old = [stepper.step() for _ in range(3)]  # the oldest branch, once left
    for _ in range(3):
        stepper.undo()
    newer = [stepper.step(token_id=third(stepper)) for _ in range(2)]
    stepper.undo()
    stepper.undo()
    current = [stepper.step(token_id=stepper.next_top(2)[0][1].token_id) for _ in range(2)]
    tree, here = tree_of(stepper)
    assert tree.steps_to(here) == current
    kept = paths_of(tree)
    on_path = tuple(step.token_id for step in current)
    assert len([path for path in kept if path != on_path[: len(path)]]) == 3
    assert tuple(s.token_id for s in newer) in kept, "the newer branch stays"
    assert tuple(s.token_id for s in old) not in kept, "the oldest branch's tip goes first"


def test_a_run_file_carries_the_tree_and_restores_it_exactly(lm):
    stepper, first, second = branching_run(lm)
    jump(stepper, tree_of(stepper)[0].path_keys(tree_of(stepper)[1])[2])  # an inner node is current
    tree, current = tree_of(stepper)
    run = json.loads(dumps_run(export_run(stepper, top_k=5, sampling=SEEDED)))
    assert [s["token_id"] for s in run["steps"]] == [s.token_id for s in second[:2]]
    assert len(run["branches"]) == 2
    assert sum(len(b["steps"]) for b in run["branches"]) == len(tree) - len(run["steps"])
    restored = restore_run(lm, parse_run(json.dumps(run)))
    assert restored.warnings == []
    again, here = tree_of(restored.stepper)
    assert restored.stepper.steps == stepper.steps
    assert again.steps_to(here) == tree.steps_to(current)
    assert paths_of(again) == paths_of(tree)  # every node, with its Step (probability, rank, how chosen)
    # And each restored branch is the path it was: jumping to it there gives the same state.
    for steps in (first, second):
        key = next(k for k in (n.key for n in again.nodes()) if again.steps_to(k) == steps)
        jump(restored.stepper, key)
        assert_same_state(restored.stepper, fresh_along(lm, steps))


def test_a_run_file_without_branches_loads_as_before(tiny_lm):
    stepper = TokenStepper.from_text(tiny_lm, PROMPT)
    for _ in range(3):
        stepper.step()
    run = export_run(stepper)
    assert "branches" not in run, "a run that never left its path writes the file it always wrote"
    old = json.loads(dumps_run(run))
    restored = restore_run(tiny_lm, parse_run(json.dumps(old)))
    tree, current = tree_of(restored.stepper)
    assert restored.stepper.steps == stepper.steps and len(tree) == 3
    assert tree.steps_to(current) == stepper.steps
    with_null = {**old, "branches": None}
    assert restore_run(tiny_lm, with_null).stepper.steps == stepper.steps


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.__setitem__("parent", 5), "parent 5"),
        (lambda b: b.__setitem__("shared", 99), "shared 99"),
        (lambda b: b.__setitem__("steps", []), "has no steps"),
        (lambda b: b["steps"][0].__setitem__("token_id", -1), r"token id -1.*in branch 1"),
        (lambda b: b["steps"][0].__setitem__("chosen_by", "guessed"), "chosen_by 'guessed'"),
    ],
)
def test_a_bad_branch_is_refused_naming_it(tiny_lm, change, message):
    stepper, _, _ = branching_run(tiny_lm)
    run = json.loads(dumps_run(export_run(stepper)))
    change(run["branches"][0])
    with pytest.raises(RunFileError, match=message):
        restore_run(tiny_lm, run)


def test_more_branch_tokens_than_a_tree_keeps_are_refused(tiny_lm):
    stepper, _, _ = branching_run(tiny_lm)
    run = json.loads(dumps_run(export_run(stepper)))
    branch = run["branches"][0]
    run["branches"] = [copy.deepcopy(branch) for _ in range(MAX_BRANCH_NODES // len(branch["steps"]) + 1)]
    with pytest.raises(RunFileError, match=f"at most {MAX_BRANCH_NODES}"):
        restore_run(tiny_lm, run)


def test_the_documented_branches_have_the_fields_export_writes(tiny_lm):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "run-format.md").read_text(encoding="utf-8")
    example = json.loads(re.findall(r"```json\n(.*?)```", doc, re.S)[1])  # the second example: branches
    stepper, _, _ = branching_run(tiny_lm)
    written = export_run(stepper)["branches"][0]
    assert set(example["branches"][0]) == set(written)
    assert set(example["branches"][0]["steps"][0]) == set(written["steps"][0])
    for key in written:
        assert f"`branches[].{key}`" in doc, f"{key} is not described"


def test_the_browser_keeps_the_branches_small_and_a_reload_gets_the_tree_back(tiny_lm, tmp_path: Path):
    stepper, _, _ = branching_run(tiny_lm)
    settings = PageSettings(5, None, False)
    kept = json.loads(json.dumps(stored_run(stepper, settings)))
    assert all("top" not in step for branch in kept["branches"] for step in branch["steps"])
    context = PageContext(ModelCache([tiny_lm.name], loaded=[tiny_lm]), offers_choice=True, export_folder=tmp_path)
    restored = read_stored_run(context, kept)
    assert restored is not None
    assert paths_of(tree_of(restored.stepper)[0]) == paths_of(tree_of(stepper)[0])


def test_the_drawing_marks_the_current_path_and_escapes_every_token(tiny_lm):
    stepper, first, second = branching_run(tiny_lm)
    markup = tiny_lm.tokenizer.encode("<b>", add_special_tokens=False)[0]  # a token that is markup
    stepper.step(token_id=markup)
    tree, current = tree_of(stepper)
    nodes = tree.nodes()
    drawn = tree_html(stepper, tree, nodes, current)
    text = visible_whitespace(tiny_lm.texts.text(markup))
    assert "<" in text and f"<code>{html.escape(text)}</code>" in drawn and f"<code>{text}</code>" not in drawn
    assert drawn.count("← you are here") == 1
    assert drawn.count("class='paths-node on-path'") == len(stepper.steps) + 1  # the prompt too
    other = drawn.count("<span aria-hidden='true'>○</span>")
    assert other == len(first) - 1  # the greedy branch's own two tokens: its first is shared
    choices = node_choices(stepper, tree, nodes, current)
    assert len(choices) == len(nodes) and sum("you are here" in label for label, _ in choices) == 1
    assert all(value.startswith(f"{tree.name}:") for _, value in choices)
