"""Every path a sequence has taken from its prompt: the tree of branches that Undo and picks leave.

Gradio-free, token ids only. A `PathTree` is a trie over generated token ids: its root is the prompt,
each other node one generated token, holding the `Step` that chose it (the model's probability of
that token there, its rank, how it was chosen). A node's path is the prompt followed by the tokens
from the root down to it, so two branches that share a beginning share its nodes.

Every `TokenStepper` owns one (`stepper.paths`). The stepper's own steps stay the truth for the
current path: the tree takes them in when something could lose them, that is before an Undo and
before a jump (`TokenStepper.undo`, `TokenStepper.go_to`), and whenever someone reads the tree
(`tree_of`). So a normal Step costs nothing here, and a taken-back or replaced token stays as a
branch. `jump(stepper, key)` puts a node's path back: its ids and its Step records exactly as they
were (the stepper then reads, in one pass, the positions its KV cache does not share with the path
it left).

Siblings (the tokens tried at one position after the same path) come ordered by the model's
probability of them, highest first, so the order says which the model preferred and does not
depend on the order they were tried in. A run file keeps the tree as `branches` (see
`branches` here and tokstep.core.run_branches); links keep only the current path.

    >>> stepper = TokenStepper.from_text(lm, "Once upon a time")
    >>> first = stepper.step()                      # greedy
    >>> _ = stepper.undo()                          # the token stays in the tree, as a branch
    >>> second = stepper.step(token_id=stepper.next_top(3)[0][2].token_id)  # picked instead
    >>> tree, here = tree_of(stepper)
    >>> [tree.node(key).step.token_id for key in tree.node(ROOT).children] == [first.token_id, second.token_id]
    True
    >>> _ = jump(stepper, tree.node(ROOT).children[0])  # back to the greedy branch
    >>> stepper.steps == [first]
    True
"""

from __future__ import annotations

import heapq
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the stepper imports this module: only type checkers read the other way round
    from tokstep.core.stepper import Step, TokenStepper

ROOT = 0  # the root's key: the prompt, before any generated token
# Nodes kept off the current path, at most. Each holds a Step (its top-k list: about 1.5 KB with
# the page's top 5), and a server keeps hundreds of tabs: past this many the branches least
# recently on the current path are trimmed, from their tips. A run file holds at most as many.
MAX_BRANCH_NODES = 512


class PathError(LookupError):
    """A node that is not in the tree (trimmed, or from another tree); the message says so."""


@dataclass
class _Node:
    step: Step | None  # None for the root
    parent: int | None  # None for the root
    depth: int  # generated tokens from the prompt down to this node, itself included
    children: dict[int, int] = field(default_factory=dict)  # token id -> node key
    touched: int = 0  # when it was last on the current path (the tree's clock)


@dataclass(frozen=True)
class PathNode:
    """One node as the tree shows it (a copy: the tree may change after it is read)."""

    key: int
    parent: int | None  # None: the root (the prompt)
    depth: int  # 0 for the root; n for the n-th generated token
    step: Step | None  # how its token was chosen; None for the root
    children: tuple[int, ...]  # keys, the model's most likely first


@dataclass(frozen=True)
class Branch:
    """A path of the tree that the current path does not cover, as a run file keeps it: the first
    `shared` generated tokens of an earlier path, then `steps` of its own."""

    parent: int | None  # the index of an earlier branch in the list; None: the current path
    shared: int  # generated tokens it has in common with that path, from the prompt
    steps: tuple[Step, ...]  # its own steps after them (at least one)


class PathTree:
    """The tree of every path taken from one prompt (see the module's docstring).

    Thread-safe: a page's events may read it while another event's Undo adds to it."""

    def __init__(self, max_branch_nodes: int = MAX_BRANCH_NODES) -> None:
        self.max_branch_nodes = max_branch_nodes
        # Names this tree among others, so that a node key chosen on an old tree (before a Reset)
        # is not taken for a node of the new one (tokstep.web.path_tree_view puts it in its values).
        self.name = secrets.token_hex(6)
        self._nodes: dict[int, _Node] = {ROOT: _Node(None, None, 0)}
        self._next_key = ROOT + 1
        self._clock = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many generated-token nodes the tree holds (the root not counted)."""
        return len(self._nodes) - 1

    def follow(self, steps: Sequence[Step]) -> int:
        """Take in the stepper's current path (its Steps, in order) and return its last node's key.

        These Steps win over ones the tree held for the same tokens (the newest record of how each
        token was chosen). Past `max_branch_nodes` off this path, the oldest branches are trimmed."""
        with self._lock:
            self._clock += 1
            key = self._add(steps, replace=True)
            self._trim(key)
            return key

    def merge(self, steps: Sequence[Step]) -> int:
        """Add a path taken elsewhere (a run file's branch) and return its last node's key. Nodes the
        tree holds already keep their Steps; nothing is trimmed."""
        with self._lock:
            return self._add(steps, replace=False)

    def _add(self, steps: Sequence[Step], replace: bool) -> int:
        key, clock = ROOT, self._clock
        self._nodes[ROOT].touched = clock
        for step in steps:
            node = self._nodes[key]
            child = node.children.get(step.token_id)
            if child is None:
                child = self._next_key
                self._next_key += 1
                self._nodes[child] = _Node(step, key, node.depth + 1, touched=clock)
                node.children[step.token_id] = child
            else:
                kept = self._nodes[child]
                if replace:
                    kept.step, kept.touched = step, clock
            key = child
        return key

    def _trim(self, current: int) -> None:
        """Remove the least recently followed leaves off the path to `current` until at most
        `max_branch_nodes` nodes are off it. A parent left without children is a leaf in turn (it was
        followed no later than its children, so it goes soon after them)."""
        on_path = self._path_keys(current)
        excess = len(self._nodes) - len(on_path) - self.max_branch_nodes
        if excess <= 0:
            return
        leaves = [(n.touched, key) for key, n in self._nodes.items() if not n.children and key not in on_path]
        heapq.heapify(leaves)
        while excess > 0 and leaves:
            _, key = heapq.heappop(leaves)
            node = self._nodes.pop(key)
            parent = self._nodes[node.parent]  # type: ignore[index]  (a removed node is off the path: never the root)
            del parent.children[node.step.token_id]  # type: ignore[union-attr]
            excess -= 1
            if not parent.children and node.parent not in on_path:
                heapq.heappush(leaves, (parent.touched, node.parent))  # type: ignore[arg-type]

    def _path_keys(self, key: int) -> set[int]:
        keys = set()
        while key is not None:
            keys.add(key)
            key = self._nodes[key].parent  # type: ignore[assignment]
        return keys

    def _known(self, key: int) -> _Node:
        node = self._nodes.get(key) if isinstance(key, int) and not isinstance(key, bool) else None
        if node is None:
            raise PathError(f"There is no node {key!r} in this tree of paths (it may have been trimmed).")
        return node

    def node(self, key: int) -> PathNode:
        """The node `key` (PathError when the tree has none)."""
        with self._lock:
            return self._copy(key, self._known(key))

    def _copy(self, key: int, node: _Node) -> PathNode:
        children = sorted(node.children.values(), key=self._sibling_order)
        return PathNode(key, node.parent, node.depth, node.step, tuple(children))

    def _sibling_order(self, key: int) -> tuple[float, int]:
        step = self._nodes[key].step
        return (-step.prob, step.token_id)  # type: ignore[union-attr]

    def steps_to(self, key: int) -> list[Step]:
        """The Steps of the path from the prompt to node `key`, in order (PathError when unknown)."""
        with self._lock:
            node = self._known(key)
            steps: list[Step] = []
            while node.step is not None:
                steps.append(node.step)
                node = self._nodes[node.parent]  # type: ignore[index]
            steps.reverse()
            return steps

    def path_keys(self, key: int) -> list[int]:
        """The keys from the root down to node `key`, both included (PathError when unknown)."""
        with self._lock:
            self._known(key)
            keys = []
            while key is not None:
                keys.append(key)
                key = self._nodes[key].parent  # type: ignore[assignment]
            keys.reverse()
            return keys

    def nodes(self) -> list[PathNode]:
        """Every node, root first, depth first, siblings by the model's probability (highest first)."""
        with self._lock:
            return list(self._walk())

    def _walk(self) -> Iterator[PathNode]:
        stack = [ROOT]  # no recursion: a tree of many forks would pass Python's recursion limit
        while stack:
            key = stack.pop()
            shown = self._copy(key, self._nodes[key])
            yield shown
            stack.extend(reversed(shown.children))

    def branches(self, current: int) -> list[Branch]:
        """The tree less the path to `current`, as paths (see `Branch`), in depth-first order so that
        each one shares as much as it can with the one before (which restoring it steps from)."""
        with self._lock:
            if len(self._nodes) == self._known(current).depth + 1:
                return []  # the tree is the current path alone (a run never left): no walk
            owner: dict[int, int | None] = dict.fromkeys(self._path_keys(current))  # None: the current path
            branches: list[Branch] = []
            for shown in self._walk():
                if shown.children or shown.key in owner:
                    continue  # an inner node is covered by its leaves; the current path is the run's own
                chain, key = [], shown.key
                while key not in owner:
                    chain.append(key)
                    key = self._nodes[key].parent  # type: ignore[assignment]
                for own in chain:
                    owner[own] = len(branches)
                steps = tuple(self._nodes[own].step for own in reversed(chain))
                branches.append(Branch(owner[key], self._nodes[key].depth, steps))  # type: ignore[arg-type]
            return branches


def tree_of(stepper: TokenStepper) -> tuple[PathTree, int]:
    """The stepper's tree with its current path taken in, and the current node's key."""
    # A copy of the list: an Auto-run in another thread may append to it meanwhile.
    return stepper.paths, stepper.paths.follow(list(stepper.steps))


def jump(stepper: TokenStepper, key: int) -> list[Step]:
    """Put node `key`'s path back on the stepper: its ids and Step records exactly as they were.
    Returns those Steps; PathError for a node the stepper's tree does not hold."""
    steps = stepper.paths.steps_to(key)
    stepper.go_to(steps)
    return steps
