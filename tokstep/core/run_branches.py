"""A run file's `branches`: the tree of paths (tokstep.core.path_tree) beside the run's own steps.

Gradio-free. The field is optional: a run without branches has none, and a file without it (any
file written before it existed) loads as before. Each branch is a path the run's own steps do not
cover, given as the first `shared` generated tokens of an earlier path (the run's steps, or an
earlier branch) and then steps of its own, in the format of the run's `steps` (docs/run-format.md):

    "branches": [
      {"parent": null, "shared": 2, "steps": [{"position": 6, "token_id": 262, ...}]},
      {"parent": 0, "shared": 3, "steps": [...]}
    ]

Restoring treats branches as it treats the run's steps (tokstep.core.run_files): every branch is
checked before any forward pass; only token ids, `chosen_by`, the sampling settings and stop
reasons are taken from the file, and the model computes every probability again. Branches are
stepped on a second stepper of their own, one token at a time and with Undo between them, as the
tokens were first stepped, so the run's own state is restored exactly as without branches and each
branch's numbers are the ones the model gave it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokstep.core.model import LanguageModel
from tokstep.core.path_tree import MAX_BRANCH_NODES, tree_of
from tokstep.core.run_files import RunFileError, _check_step, _RecordedStep, _replay, step_dict
from tokstep.core.stepper import TokenStepper


@dataclass(frozen=True)
class CheckedBranch:
    """One branch of a run file, checked: its whole path's token ids and its own recorded steps."""

    ids: tuple[int, ...]  # the generated tokens from the prompt to its last one
    shared: int  # how many of them come from the path it leaves
    steps: tuple[_RecordedStep, ...]  # its own, ids[shared:]


def branches_field(stepper: TokenStepper) -> list[dict[str, Any]]:
    """The stepper's tree of paths less its current path, as a run file's `branches` (empty when it
    has never left a path)."""
    tree, current = tree_of(stepper)
    return [
        {"parent": branch.parent, "shared": branch.shared, "steps": [step_dict(step) for step in branch.steps]}
        for branch in tree.branches(current)
    ]


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_branches(
    lm: LanguageModel, run: dict[str, Any], prompt_length: int, own_ids: list[int]
) -> list[CheckedBranch]:
    """The run's branches, checked before any pass (RunFileError naming the branch); [] without any."""
    listed = run.get("branches")
    if listed is None:
        return []
    if not isinstance(listed, list):
        raise RunFileError("The run file's 'branches' is not a list.")
    total = sum(len(b.get("steps", ())) for b in listed if isinstance(b, dict) and isinstance(b.get("steps"), list))
    if total > MAX_BRANCH_NODES:
        raise RunFileError(
            f"The run file's branches hold {total} tokens; tokstep keeps at most {MAX_BRANCH_NODES} tokens of branches."
        )
    room = None if lm.context_length is None else lm.context_length - prompt_length
    paths: list[tuple[int, ...]] = []
    checked: list[CheckedBranch] = []
    for index, branch in enumerate(listed):
        where = f"branch {index + 1}"
        if not isinstance(branch, dict):
            raise RunFileError(f"The run file's {where} is not an object.")
        parent, shared, steps = branch.get("parent"), branch.get("shared"), branch.get("steps")
        if parent is not None and not (_whole(parent) and 0 <= parent < index):
            raise RunFileError(f"The run file's {where} has parent {parent!r}: it must be null or an earlier branch.")
        base = tuple(own_ids) if parent is None else paths[parent]
        if not (_whole(shared) and 0 <= shared <= len(base)):
            raise RunFileError(f"The run file's {where} has shared {shared!r}: it must be from 0 to {len(base)}.")
        if not isinstance(steps, list) or not steps:
            raise RunFileError(f"The run file's {where} has no steps.")
        try:
            recorded = tuple(_check_step(step, i, lm.vocab_size) for i, step in enumerate(steps))
        except RunFileError as error:
            raise RunFileError(f"{error} (in {where})") from None
        ids = base[:shared] + tuple(step.token_id for step in recorded)
        if room is not None and len(ids) > room:
            raise RunFileError(
                f"The run file's {where} has {prompt_length + len(ids)} tokens, "
                f"but {lm.name} reads at most {lm.context_length}."
            )
        paths.append(ids)
        checked.append(CheckedBranch(ids, shared, recorded))
    return checked


def restore_branches(stepper: TokenStepper, branches: list[CheckedBranch], top_k: int, warnings: list[str]) -> None:
    """Step every branch (checked by `check_branches`) and add it to `stepper`'s tree of paths.

    On a second stepper, so `stepper` stays as restored. Branches come in depth-first order from
    tokstep (each leaves the one before as late as it can), so going from one to the next is a few
    Undos, which cost no pass, and its own tokens; any order works, at the cost of more passes."""
    if not branches:
        return
    tree, _ = tree_of(stepper)  # the run's own path first: its Steps are the tree's
    walker = TokenStepper(stepper.lm, stepper.ids[: stepper.prompt_length], stepper.prompt_text)
    try:
        for index, branch in enumerate(branches):
            prefix = branch.ids[: branch.shared]
            common = 0
            here = walker.generated_ids
            while common < min(len(here), len(prefix)) and here[common] == prefix[common]:
                common += 1
            while len(walker.steps) > common:
                walker.undo()
            for token_id in prefix[common:]:  # nodes the tree holds already: their Steps stay
                walker.step(top_k, token_id=token_id)
            own: list[str] = []
            for offset, recorded in enumerate(branch.steps):
                _replay(walker, recorded, top_k, branch.shared + offset, own)
            for warning in own:
                if "probabilities differ" in warning and any("probabilities differ" in w for w in warnings):
                    continue
                warnings.append(f"In branch {index + 1}: {warning}")
            tree.merge(walker.steps)
    finally:
        walker.release()
