"""Scheduling forward passes: one at a time, with concurrent sessions' steps sharing a batch.

On a CPU, one decode step of GPT-2 small is bound by reading its ~0.5 GB of weights from
memory, whatever the batch size. Thirty users stepping one after another pay that thirty
times; batched, the weights are read once for all of them. So in the batched runtime every
pass of a model goes through its `ForwardBatcher`:

  - A thread that needs next-token logits queues a request and waits.
  - Whichever waiting thread finds no pass running becomes the leader: it takes every
    queued request (up to `max_batch`), runs them, hands each its result, and wakes the
    others. Requests that arrive during a pass wait for the next one, so a lone user
    waits for nothing and a class fills the batches by itself.
  - When more requests wait than fit in a pass, clients take turns (`in_turn`): one row per
    client per round, the clients served least recently first, instead of arrival order. A
    client is what a request's sequence key names (tokstep.core.forward.SequenceKey: a page
    session, an API caller); so a client with 80 sequences waiting gets a row per round as a
    client with one does, and cannot keep the others out of the passes.
  - A request queued ahead (`submit`, for a prefetch) with nobody waiting to lead is run by
    the batcher's runner thread, started by the first such request.

How a pass lays out the caches it batches (padding, room, reuse) is `tokstep.runtimes.kv_layout`;
what the batcher counts is `tokstep.runtimes.counters`.

One pass at a time, always: torch already spreads one pass over every core, and two
passes in parallel threads fight over them (see docs/performance.md, "Threads").

Why not transformers' continuous batching (`generate_batch` / `ContinuousBatchingManager`):
it streams the sampled token and at most its log-probability, while tokstep needs the
whole next-token distribution at every step and must append a token the user picked.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from tokstep.core.forward import ForwardResult, PendingPass, client_of, model_device
from tokstep.runtimes import kv_layout
from tokstep.runtimes.counters import PassCounters
from tokstep.runtimes.kv_layout import BatchLayout, chunks, is_batchable

# A class of 30 (and then some) in one pass; past this, a pass's attention and cache copies
# cost more than the weights it shares, and the rest wait one pass.
DEFAULT_MAX_BATCH = 32
# Gathering a batch: a leader waits for sequences served within the last RECENT_PASSES passes
# (plus RECENT_SLACK_S for their own work between steps), at most GATHER_FRACTION of a pass
# and never more than MAX_GATHER_S. The slack stays small: a sequence that stops stepping
# without its run ending (a Step click) is still expected for that long. A run that ends is
# forgotten at once (ForwardBatcher.forget), so the next run never waits for it.
RECENT_PASSES, RECENT_SLACK_S = 2, 0.01
GATHER_FRACTION, MAX_GATHER_S = 0.5, 0.25
# A prompt's pass waits until no request has arrived for ARRIVAL_QUIET_S, at most
# MAX_PROMPT_WAIT_S: a class pressing Auto-run at once reaches the model over a few tens of
# ms (Gradio starts its events one after another), and the first prompt should not be read
# alone, then its second token alone, before the other prompts' pass. A lone user waits 3 ms once.
ARRIVAL_QUIET_S, MAX_PROMPT_WAIT_S = 0.003, 0.03
# Taking turns (see in_turn): a client not served for this many crowded passes counts as never
# served (it goes first, as a newcomer does), so the record of turns stays small.
TURN_MEMORY_PASSES = 64


def in_turn(queue: Sequence[PendingPass], served_at: Mapping[Hashable, int], size: int) -> list[PendingPass]:
    """Up to `size` of `queue`'s requests, clients in turn (see the module docstring).

    Each client's requests queue in arrival order; each round takes the next one of every client
    that has one left, until `size` are taken. Clients go in the order they were last served
    (`served_at`: client -> the crowded pass that last gave it a row; never served goes first),
    ties by the arrival of their first request. The requests come back in queue order."""
    lanes: dict[Hashable, list[PendingPass]] = {}
    for request in queue:
        lanes.setdefault(client_of(request.sequence), []).append(request)
    order = sorted(lanes, key=lambda client: served_at.get(client, -1))  # stable: ties keep arrival order
    taken: set[int] = set()
    for depth in range(max((len(lane) for lane in lanes.values()), default=0)):
        for client in order:
            lane = lanes[client]
            if depth < len(lane) and len(taken) < size:
                taken.add(id(lane[depth]))
    return [request for request in queue if id(request) in taken]


class ForwardBatcher:
    """Runs a model's forward passes one at a time, batching concurrent decode steps."""

    def __init__(
        self, model: PreTrainedModel, forward_lock: threading.Lock, max_batch: int = DEFAULT_MAX_BATCH
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}.")
        self.model = model
        self.max_batch = max_batch
        # Also taken by other code that runs the model (e.g. scoring a prompt).
        self.forward_lock = forward_lock
        # One lock guards the queue and the counters below. Threads sleep on one of three
        # conditions of it, so that a wake-up goes only to a thread with something to do: with
        # one condition, each request woke the runner thread twice (a lone user's every token),
        # and in a class every arrival woke every thread waiting for the running pass. Each
        # wake-up takes the GIL from the pass.
        self._lock = threading.RLock()
        self._pass_ended = threading.Condition(self._lock)  # threads in `wait` while a pass runs
        self._arrived = threading.Condition(self._lock)  # a leader gathering its batch (see _gather)
        self._runner_needed = threading.Condition(self._lock)  # the runner: requests queued, nobody to lead
        self._queue: list[PendingPass] = []
        self._running = False  # a thread is leading a pass
        self._in_pass: list[PendingPass] = []  # the requests of the pass running now
        self._waiters = 0  # threads in `wait`: one of them leads the next pass
        self._runner: threading.Thread | None = None  # started by the first `submit`
        # Prefetching (TokenStepper.prefetch) lets the runner thread run a sequence's next pass
        # while its caller hands the current token out. For a class it keeps the passes back to
        # back (on 2 CPU cores: 50-60 ms idle between passes -> ~10 ms). For a lone sequence it
        # pays only on a CPU: the pass and its caller overlap only while the pass is inside
        # torch operators, which release the GIL. On an accelerator an operator's CPU side is a
        # kernel launch of microseconds, so the pass takes the GIL back hundreds of times from
        # the very thread it was to overlap with, and waits for it each time. On an H200 (GPT-2
        # small, one client streaming /generate) the median time between tokens was 13.4 ms with
        # prefetching and 5.7-8.3 ms without; see docs/performance.md, "GPU". None: decided by
        # where the model is at each step (it may be moved after loading); tests may set it.
        self._prefetches_alone: bool | None = None
        self._last_arrival = 0.0  # when the newest request was queued (monotonic seconds)
        self._recent: dict[Hashable, float] = {}  # sequence -> when a pass last served it
        self._last_pass_s = 0.0
        self._recent_window_s = 0.0
        # Turns (see in_turn), for passes that cannot take everyone waiting: client -> the number of
        # the crowded pass that last served it. Forgotten whenever one pass takes everyone.
        self._crowded_passes = 0
        self._served_at: dict[Hashable, int] = {}
        self.counters = PassCounters()  # for tests and benchmarks: read, never steer
        self.layout = BatchLayout(model, self.counters)  # how each pass lays out its caches

    def forward(self, ids: Sequence[int], cache: Cache | None, cached: int, sequence: Hashable = None) -> ForwardResult:
        """Feed `ids` on top of `cache` (which holds `cached` positions); wait for the logits.

        `sequence` names who asks (the same for each step of one sequence), so that the next
        pass can wait a moment for sequences that stepped in the last ones (see _gather)."""
        request = self._request(ids, cache, cached, sequence)
        with self._lock:  # queued and waited for in one hold: the runner leaves it to this thread
            self._enqueue(request, caller_waits=True)
            return self._await(request)

    def submit(self, ids: Sequence[int], cache: Cache | None, cached: int, sequence: Hashable = None) -> PendingPass:
        """Queue a pass for `ids` (as `forward`) and return at once; `wait` gives its result.

        The next pass takes it, whoever leads that pass; when no thread is waiting to lead one,
        the batcher's runner thread does, so the pass runs while the caller does other work.
        `cache` is extended in place by that pass: its owner must not touch it until `wait`."""
        request = self._request(ids, cache, cached, sequence)
        with self._lock:
            if self._runner is None:
                # The thread holds the batcher weakly, so a model nobody uses any more is freed;
                # the finalizer then wakes the thread, which ends.
                self._runner = threading.Thread(
                    target=self._run_forever,
                    args=(weakref.ref(self), self._runner_needed),
                    name="tokstep-forward-runner",
                    daemon=True,
                )
                # Not at exit: the daemon thread just stops then, and nothing should wait for its lock.
                weakref.finalize(self, self._wake, self._runner_needed).atexit = False
                self._runner.start()
            self._enqueue(request, caller_waits=False)
        return request

    def _enqueue(self, request: PendingPass, caller_waits: bool) -> None:
        """Queue `request` (the lock held) and wake whoever may take it: a gathering leader, or,
        unless the caller is about to wait for it (and so lead its pass), the runner."""
        self._queue.append(request)
        self._last_arrival = time.monotonic()
        self._arrived.notify_all()
        if not caller_waits:
            self._call_runner_if_needed()

    def _call_runner_if_needed(self) -> None:
        """Wake the runner (the lock held) when requests are queued and no thread will lead their
        pass: none is running, and no thread waits in `wait` (one of those would lead it)."""
        if self._queue and not self._running and self._waiters == 0:
            self._runner_needed.notify()

    def wait(self, request: PendingPass) -> ForwardResult:
        """The submitted request's result, once a pass has run it; this thread leads the pass when
        none is running. Raises what the pass raised."""
        with self._lock:
            return self._await(request)

    def _await(self, request: PendingPass) -> ForwardResult:
        """`wait`, with the lock held once (`_lead` releases it during the pass)."""
        self._waiters += 1
        try:
            while not request.done:
                if self._running:
                    self._pass_ended.wait()
                else:
                    self._lead()
        finally:
            self._waiters -= 1
            self._call_runner_if_needed()  # requests nobody waits for: the runner takes them
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    @staticmethod
    def _run_forever(batcher_ref: weakref.ref[ForwardBatcher], condition: threading.Condition) -> None:
        """The runner thread: leads a pass whenever requests are queued and no waiting thread will;
        ends once its batcher is gone. `condition` is the batcher's `_runner_needed`."""
        with condition:
            woken = False
            while (batcher := batcher_ref()) is not None:
                batcher.counters.runner_wakeups += woken
                woken = False
                if batcher._queue and not batcher._running and batcher._waiters == 0:
                    batcher._lead()
                else:
                    del batcher  # not held while asleep: the batcher may be freed meanwhile
                    condition.wait()
                    woken = True

    @staticmethod
    def _wake(condition: threading.Condition) -> None:
        """The batcher is gone: wake its runner thread, which then ends."""
        with condition:
            condition.notify_all()

    def _lead(self) -> None:
        """Run the next pass from this thread (called with the lock held; released meanwhile)."""
        self._running = True
        self._lock.release()
        try:
            # The batch is taken once the model is free, so requests that arrive while anything
            # else runs on it (another pass, a prompt being scored) join it.
            with self.forward_lock, torch.inference_mode():
                with self._lock:
                    self._gather()
                    batch = self._in_pass = self._take_batch()
                self._run(batch)
                self._remember(batch)
        finally:
            self._lock.acquire()
            self._running, self._in_pass = False, []
            self._pass_ended.notify_all()  # their requests are answered, or one of them leads next
            self._call_runner_if_needed()

    def _take_batch(self) -> list[PendingPass]:
        """Take the next pass's requests out of the queue (the lock held): all of them when they
        fit, else `max_batch` of them, clients in turn (in_turn)."""
        if len(self._queue) <= self.max_batch:
            batch, self._queue = self._queue, []
            self._served_at.clear()  # everyone waiting is served: nobody is owed a turn
            return batch
        batch = in_turn(self._queue, self._served_at, self.max_batch)
        taken = {id(request) for request in batch}
        self._queue = [request for request in self._queue if id(request) not in taken]
        self._crowded_passes += 1
        for request in batch:
            self._served_at[client_of(request.sequence)] = self._crowded_passes
        oldest = self._crowded_passes - TURN_MEMORY_PASSES
        for client in [client for client, served in self._served_at.items() if served < oldest]:
            del self._served_at[client]
        return batch

    @staticmethod
    def _request(ids: Sequence[int], cache: Cache | None, cached: int, sequence: Hashable) -> PendingPass:
        return PendingPass([int(i) for i in ids], cache, cached, sequence if sequence is not None else object())

    def cancel(self, request: PendingPass) -> bool:
        """Take a submitted request back out of the queue; False when a pass has taken it already
        (it then runs to its end, and its result is simply not read)."""
        with self._lock:
            if request in self._queue:
                self._queue.remove(request)
                return True
            return False

    def _gather(self) -> None:
        """Wait briefly (the lock held) for sequences that stepped in the last passes.

        Without this, a class splits in two halves that take turns: while one half's pass
        runs, the other half queues, so each pass serves half the class and every token
        costs two passes. Sequences that stepped within the last few passes are expected
        back; the leader waits for them at most half a pass (never when all are queued, so a
        lone user's steps never wait). A queue that holds prompts also waits for a burst of
        arrivals to end (see ARRIVAL_QUIET_S): a lone user's first token waits 3 ms."""
        now = time.monotonic()
        expected = {sequence for sequence, seen in self._recent.items() if now - seen <= self._recent_window_s}
        deadline = now + min(GATHER_FRACTION * self._last_pass_s, MAX_GATHER_S)
        prompt_deadline = now + MAX_PROMPT_WAIT_S
        while len(self._queue) < self.max_batch:
            now = time.monotonic()
            missing = expected - {request.sequence for request in self._queue}
            if missing and now < deadline:
                self._arrived.wait(deadline - now)
                continue
            # Prompts in the queue: let a burst of arrivals (a class starting) finish first.
            quiet_at = self._last_arrival + ARRIVAL_QUIET_S
            if now < min(quiet_at, prompt_deadline) and any(request.cache is None for request in self._queue):
                self._arrived.wait(min(quiet_at, prompt_deadline) - now)
                continue
            return

    def _remember(self, batch: list[PendingPass]) -> None:
        """Note who was served and how long passes take, for the next _gather."""
        now = time.monotonic()
        results = [request.result for request in batch if request.result is not None]
        if results:
            self._last_pass_s = max(result.forward_ms for result in results) / 1000.0
        # Expected back within a few passes (each sequence's own work between steps included).
        self._recent_window_s = RECENT_PASSES * self._last_pass_s + RECENT_SLACK_S
        with self._lock:
            for request in batch:
                if not request.forgotten:
                    self._recent[request.sequence] = now
            for sequence, seen in list(self._recent.items()):
                if now - seen > self._recent_window_s:
                    del self._recent[sequence]

    @property
    def prefetches_alone(self) -> bool:
        """Whether a lone sequence queues its next pass ahead: on a CPU, unless set otherwise."""
        if self._prefetches_alone is not None:
            return self._prefetches_alone
        return model_device(self.model).type == "cpu"

    @prefetches_alone.setter
    def prefetches_alone(self, value: bool) -> None:
        self._prefetches_alone = value

    def forget(self, sequence: Hashable) -> None:
        """`sequence`'s run has ended: the next passes do not wait for it (see _gather), and it no
        longer counts as a class stepping beside the next lone run (see should_prefetch). A pass
        running for it now (a run stopped mid-pass) does not note it again as it ends."""
        with self._lock:
            self._recent.pop(sequence, None)
            for request in self._in_pass:
                if request.sequence == sequence:
                    request.forgotten = True

    def should_prefetch(self, sequence: Hashable) -> bool:
        """Whether `sequence` should queue its next pass ahead (see `prefetches_alone`): always on
        a CPU; elsewhere only when other sequences stepped in the last passes."""
        if self.prefetches_alone:
            return True
        with self._lock:
            return any(other != sequence for other in self._recent)

    @property
    def waiting(self) -> int:
        """Requests queued for the next pass."""
        with self._lock:
            return len(self._queue)

    def _run(self, batch: list[PendingPass]) -> None:
        """Run `batch`: decodes that can share a pass together, the rest one by one."""
        decodes = [request for request in batch if is_batchable(request.cache, len(request.ids))]
        prefills = [request for request in batch if request.cache is None and self.layout.pads_prefills]
        # A group of one is just a single pass, without padding or a mask.
        groups = [group for group in (*chunks(prefills, kv_layout.MAX_PREFILL_TOKENS), decodes) if len(group) > 1]
        grouped = {id(request) for group in groups for request in group}
        passes: list[tuple[list[PendingPass], Callable[[Any], None], Any]] = [
            (group, self.layout.forward_decodes if group[0].cache is not None else self.layout.forward_prefills, group)
            for group in groups
        ]
        passes += [([request], self.layout.forward_one, request) for request in batch if id(request) not in grouped]
        # Prompts first: a new user's first token should not wait behind the others' next ones.
        for requests, run, argument in sorted(passes, key=lambda item: item[0][0].cache is not None):
            self._settle(requests, run, argument)

    def _settle(self, requests: list[PendingPass], run: Callable[[Any], None], argument: Any) -> None:
        """Run one pass; on failure every request in it gets the error (its thread raises it)."""
        started = time.perf_counter()
        try:
            run(argument)
        except Exception as error:  # noqa: BLE001 (handed to the waiting threads, which raise it)
            for request in requests:
                request.error = error
        finally:
            self.counters.count_pass(len(requests), time.perf_counter() - started)
            for request in requests:
                request.done = True
