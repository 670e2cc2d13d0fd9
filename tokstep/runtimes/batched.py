"""Forward passes for many sequences at once: concurrent sessions' decode steps share one batch.

On a CPU, one decode step of GPT-2 small is bound by reading its ~0.5 GB of weights from
memory, whatever the batch size. Thirty users stepping one after another pay that thirty
times; batched, the weights are read once for all of them. So every forward pass of a
model goes through its `ForwardBatcher`:

  - A thread that needs next-token logits queues a request and waits.
  - Whichever waiting thread finds no pass running becomes the leader: it takes every
    queued request (up to `max_batch`), runs them, hands each its result, and wakes the
    others. Requests that arrive during a pass wait for the next one, so a lone user
    waits for nothing and a class fills the batches by itself. There is no extra thread.
  - Decode requests (one new token on top of a cache whose layers are plain
    `DynamicLayer`s) run together: their caches are left-padded to the longest one, an
    attention mask hides the padding, and each row gets its own position id.
  - Prefills (a prompt, or a sequence read again after its cache was released) run
    together too, left-padded the same way, so a class that starts at once gets its first
    tokens after one pass, not thirty. Caches that cannot be padded (sliding windows,
    recurrent state) run one by one, in the same turn.

One pass at a time, always: torch already spreads one pass over every core, and two
passes in parallel threads fight over them (see docs/performance.md, "Threads").

Each sequence keeps its own `DynamicCache`; after a batched pass its layers point at its
row of the batch's cache (a view: no copy), and `undo`'s crop works on it as on any cache.
A pass appends its new keys and values into room kept after the positions (see _RoomyLayer):
the batch's own, or, for a sequence stepping alone, a row of its own; never where another
sequence's view reaches.

Why not transformers' continuous batching (`generate_batch` / `ContinuousBatchingManager`):
it streams the sampled token and at most its log-probability, while tokstep needs the
whole next-token distribution at every step and must append a token the user picked.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer

from tokstep.core.distribution import NextTokenSummary, summarize

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
# A batched decode pass appends every row's new keys and values to the batch's cache. A
# DynamicLayer appends by concatenation, which copies the whole cache at each pass: for a class
# of 30 on GPT-2 small that copy made a pass at 256 positions 2.4x slower (2 CPU cores). A
# batch's cache keeps room for DECODE_ROOM more positions instead, and the next pass over the
# same sequences writes into it in place (see _RoomyLayer).
DECODE_ROOM = 16
# A sequence stepping alone gets room of its own only when its cache is at least this large:
# below it, setting the room up each step costs more than the copy it saves (the bundled model's
# whole cache stays under it; GPT-2 small passes it at 14 positions).
ALONE_ROOM_MIN_BYTES = 1 << 20
# Prompts read together in one pass, counted with their padding: GPT-2 small's activations
# for 4096 positions are about 0.5 GB at the widest layer, fine on any machine we serve from.
MAX_PREFILL_TOKENS = 4096


@dataclass(frozen=True)
class ForwardResult:
    """What one sequence gets back from a pass."""

    cache: Cache  # its KV cache, now holding every id it sent
    summary: NextTokenSummary  # the next token's logits, full softmax, entropy, top tokens
    forward_ms: float  # wall time of the pass it was part of, summaries included


@dataclass(eq=False)
class ForwardRequest:
    """One sequence's place in the queue: `ForwardBatcher.submit` makes it, `wait` answers it."""

    ids: list[int]  # tokens not yet in the cache, in order
    cache: Cache | None  # holds `cached` positions, or None
    cached: int
    sequence: Hashable = None  # who asks: the same for every step of one sequence
    result: ForwardResult | None = None
    error: BaseException | None = None
    done: bool = False
    forgotten: bool = False  # its run ended while its pass ran: the pass does not expect it back


def is_batchable(cache: Cache | None, n_new: int, check_initialized: bool = True) -> bool:
    """Whether a request can join a batched decode: one new token on a paddable cache."""
    if n_new != 1 or not isinstance(cache, DynamicCache):
        return False
    if not cache.layers:
        # Layers made as they are needed (no config): plain DynamicLayers, but nothing to pad yet.
        return not check_initialized and getattr(cache, "layer_class_to_replicate", None) is DynamicLayer
    # Exactly DynamicLayer: its subclasses (sliding windows) drop old positions, so rows
    # of different lengths cannot be lined up by padding.
    return all(
        type(layer) is DynamicLayer and (layer.is_initialized or not check_initialized) for layer in cache.layers
    )


def _chunks(requests: list[ForwardRequest], max_tokens: int) -> list[list[ForwardRequest]]:
    """`requests` in order, cut into groups whose padded size (rows x longest) stays within max_tokens."""
    groups: list[list[ForwardRequest]] = []
    for request in requests:
        group = groups[-1] if groups else None
        if group is not None and (len(group) + 1) * max(len(request.ids), *(len(r.ids) for r in group)) <= max_tokens:
            group.append(request)
        else:
            groups.append([request])
    return groups


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
        self._queue: list[ForwardRequest] = []
        self._running = False  # a thread is leading a pass
        self._in_pass: list[ForwardRequest] = []  # the requests of the pass running now
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
        # Prompts can share a pass when the model's own cache is plain DynamicLayers, which
        # padding can line up (not sliding windows, not recurrent state).
        self._pads_prefills = is_batchable(DynamicCache(config=model.config), 1, check_initialized=False)
        self.passes = 0  # batched or single passes run so far (for tests and benchmarks)
        self._recent: dict[Hashable, float] = {}  # sequence -> when a pass last served it
        self._last_pass_s = 0.0
        self._recent_window_s = 0.0
        self.served = 0  # requests answered by those passes: served / passes is the mean batch size
        self.largest_batch = 0
        self.pass_seconds = 0.0  # wall time spent in those passes
        self.reused_batches = 0  # decode passes that took the last pass's cache as it was
        self.runner_wakeups = 0  # times the runner thread woke up (each takes the GIL from whoever runs)
        self._last_rows: dict[Hashable, tuple[int, int]] = {}  # sequence -> (row, first real position)
        self._last_length = 0  # positions in the last batch's cache, padding included
        # The sequence whose step last ran alone, the positions it then held, and where the
        # storages with room behind its keys and values are (per layer): see _alone_layers.
        self._last_alone: tuple[Hashable, int, list[tuple[int, int]]] | None = None

    def forward(self, ids: Sequence[int], cache: Cache | None, cached: int, sequence: Hashable = None) -> ForwardResult:
        """Feed `ids` on top of `cache` (which holds `cached` positions); wait for the logits.

        `sequence` names who asks (the same for each step of one sequence), so that the next
        pass can wait a moment for sequences that stepped in the last ones (see _gather)."""
        request = self._request(ids, cache, cached, sequence)
        with self._lock:  # queued and waited for in one hold: the runner leaves it to this thread
            self._enqueue(request, caller_waits=True)
            return self._await(request)

    def submit(self, ids: Sequence[int], cache: Cache | None, cached: int, sequence: Hashable = None) -> ForwardRequest:
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

    def _enqueue(self, request: ForwardRequest, caller_waits: bool) -> None:
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

    def wait(self, request: ForwardRequest) -> ForwardResult:
        """The submitted request's result, once a pass has run it; this thread leads the pass when
        none is running. Raises what the pass raised."""
        with self._lock:
            return self._await(request)

    def _await(self, request: ForwardRequest) -> ForwardResult:
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
                batcher.runner_wakeups += woken
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
                    batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                    self._in_pass = batch
                self._run(batch)
                self._remember(batch)
        finally:
            self._lock.acquire()
            self._running, self._in_pass = False, []
            self._pass_ended.notify_all()  # their requests are answered, or one of them leads next
            self._call_runner_if_needed()

    @staticmethod
    def _request(ids: Sequence[int], cache: Cache | None, cached: int, sequence: Hashable) -> ForwardRequest:
        return ForwardRequest([int(i) for i in ids], cache, cached, sequence if sequence is not None else object())

    def cancel(self, request: ForwardRequest) -> bool:
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

    def _remember(self, batch: list[ForwardRequest]) -> None:
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
        return self.model.device.type == "cpu"

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

    def _run(self, batch: list[ForwardRequest]) -> None:
        """Run `batch`: decodes that can share a pass together, the rest one by one."""
        decodes = [request for request in batch if is_batchable(request.cache, len(request.ids))]
        prefills = [request for request in batch if request.cache is None and self._pads_prefills]
        # A group of one is just a single pass, without padding or a mask.
        groups = [group for group in (*_chunks(prefills, MAX_PREFILL_TOKENS), decodes) if len(group) > 1]
        grouped = {id(request) for group in groups for request in group}
        passes: list[tuple[list[ForwardRequest], Callable[[Any], None], Any]] = [
            (group, self._forward_decodes if group[0].cache is not None else self._forward_prefills, group)
            for group in groups
        ]
        passes += [([request], self._forward_one, request) for request in batch if id(request) not in grouped]
        # Prompts first: a new user's first token should not wait behind the others' next ones.
        for requests, run, argument in sorted(passes, key=lambda item: item[0][0].cache is not None):
            self._settle(requests, run, argument)

    def _settle(self, requests: list[ForwardRequest], run: Callable[[Any], None], argument: Any) -> None:
        """Run one pass; on failure every request in it gets the error (its thread raises it)."""
        started = time.perf_counter()
        try:
            run(argument)
        except Exception as error:  # noqa: BLE001 (handed to the waiting threads, which raise it)
            for request in requests:
                request.error = error
        finally:
            self.pass_seconds += time.perf_counter() - started
            self.passes += 1
            self.served += len(requests)
            self.largest_batch = max(self.largest_batch, len(requests))
            for request in requests:
                request.done = True

    def _forward_one(self, request: ForwardRequest) -> None:
        """One sequence: a prompt, a re-read, or a step whose cache cannot be padded, or a step
        alone (which appends in place: see _alone_layers)."""
        pending = torch.tensor([request.ids], device=self.model.device)  # (1, T_new)
        cache, roomy = request.cache, self._alone_layers(request)
        started = time.perf_counter()
        if roomy is None:
            # Only the last position's logits are needed: (1, 1, vocab).
            output = self.model(input_ids=pending, cache=cache, use_cache=True, logits_to_keep=1)
            cache = output.cache
        else:
            # The sequence's own cache runs the pass with the roomy layers in place of its own,
            # whose keys and values then become views of them.
            own_layers, cache.layers = cache.layers, roomy  # type: ignore[union-attr]
            try:
                output = self.model(input_ids=pending, cache=cache, use_cache=True, logits_to_keep=1)
                for own, layer in zip(own_layers, roomy, strict=True):
                    own.keys, own.values = layer.keys, layer.values
            finally:
                cache.layers = own_layers  # type: ignore[union-attr]
            ptrs = [(_storage_ptr(layer.keys_room), _storage_ptr(layer.values_room)) for layer in roomy]
            self._last_alone = (request.sequence, request.cached + 1, ptrs)
        (summary,) = summarize(output.logits[:, -1])  # from (1, vocab)
        request.result = ForwardResult(cache, summary, _elapsed_ms(started, summary.logits))

    def _alone_layers(self, request: ForwardRequest) -> list[_RoomyLayer] | None:
        """For one sequence's next token: layers with room after its cache (see _RoomyLayer), or
        None when the request is not a step on a plain cache of ALONE_ROOM_MIN_BYTES or more.

        A sequence stepping alone would otherwise copy its whole cache at every step (GPT-2
        small at 512 positions: 38 MB). The first such step copies it once into room of its own;
        the next ones write into that room in place while the sequence's views are exactly what
        the last step alone left: the same sequence and positions, views from the start of the
        same storage, laid out as one row with room. Nobody else holds that room. An undo
        (shorter views), a pass in a batch (another storage) or another sequence stepping alone
        in between gives a copy again."""
        cache = request.cache
        if len(request.ids) != 1 or not is_batchable(cache, 1):
            return None
        layers = cache.layers  # type: ignore[union-attr]
        first = layers[0].keys  # (1, heads, length, head_dim)
        if 2 * len(layers) * first.numel() * first.element_size() < ALONE_ROOM_MIN_BYTES:
            return None
        last, length = self._last_alone, request.cached
        same = last is not None and last[0] == request.sequence and last[1] == length
        roomy: list[_RoomyLayer] = []
        for index, layer in enumerate(layers):
            keys_room = _room_of(layer.keys, last[2][index][0]) if same else None  # type: ignore[index]
            values_room = _room_of(layer.values, last[2][index][1]) if same else None  # type: ignore[index]
            if keys_room is None or values_room is None:
                keys_room, values_room = layer.keys, layer.values  # no room: the first update makes some
            roomy.append(_RoomyLayer(keys_room, values_room, length))
        return roomy

    def _forward_prefills(self, requests: list[ForwardRequest]) -> None:
        """Many prompts read in one pass: left-padded to the longest, padding masked out.

        Identical prompts are read once: a class that opens the page and presses Auto-run sends
        the default prompt thirty times. Their sequences then share that row's keys and values
        (views: the next positions of each go into room past them, see _RoomyLayer)."""
        row_of: dict[tuple[int, ...], int] = {}
        rows = [row_of.setdefault(tuple(request.ids), len(row_of)) for request in requests]
        prompts = [list(ids) for ids in row_of]  # one per row, in row order
        lengths = [len(ids) for ids in prompts]
        longest, batch_size = max(lengths), len(prompts)
        device = self.model.device
        # Padding takes id 0 (any id would do: it is masked out and never cached).
        input_ids = torch.zeros((batch_size, longest), dtype=torch.long, device=device)  # (B, longest)
        attention_mask = torch.zeros((batch_size, longest), dtype=torch.long, device=device)
        position_ids = torch.zeros((batch_size, longest), dtype=torch.long, device=device)
        for row, (ids, length) in enumerate(zip(prompts, lengths, strict=True)):
            input_ids[row, longest - length :] = torch.tensor(ids, device=device)
            attention_mask[row, longest - length :] = 1
            position_ids[row, longest - length :] = torch.arange(length, device=device)  # each prompt from 0
        # Each prompt's cache is its row of the batch's, from its first real position.
        starts = [longest - lengths[row] for row in rows]
        owns = [None] * len(requests)
        self._pass_and_split(requests, starts, owns, input_ids, attention_mask, position_ids, rows=rows)

    def _forward_decodes(self, requests: list[ForwardRequest]) -> None:
        """Many sequences' next token in one pass, each at its own position."""
        previous = self._previous_batch(requests)
        if previous is not None:
            # The same sequences as the last pass, untouched since: its cache is already padded.
            requests, padded = previous
            self.reused_batches += 1
        else:
            padded = self._padded_cache(requests)
        lengths = [request.cached for request in requests]
        longest, batch_size = max(lengths), len(requests)
        device = self.model.device
        input_ids = torch.tensor([request.ids for request in requests], device=device)  # (B, 1)
        # Each row's own position: absolute position embeddings (GPT-2) and rotary ones alike.
        position_ids = torch.tensor([[length] for length in lengths], device=device)  # (B, 1)
        # 1 for real positions, 0 for padding, then 1 for the new token: (B, longest + 1).
        attention_mask = torch.ones((batch_size, longest + 1), dtype=torch.long, device=device)
        for row, length in enumerate(lengths):
            attention_mask[row, : longest - length] = 0
        starts = [longest - length for length in lengths]
        owns = [request.cache for request in requests]
        self._pass_and_split(requests, starts, owns, input_ids, attention_mask, position_ids, padded)

    def _previous_batch(self, requests: list[ForwardRequest]) -> tuple[list[ForwardRequest], DynamicCache] | None:
        """The last batched pass's cache and `requests` in its row order, when `requests` are
        exactly that pass's sequences and each one's cache is still the view of its row.

        A class auto-running sends the same sequences pass after pass; padding their caches
        again each time copies every layer's keys and values (tens of MB for GPT-2 small at
        30 sequences). No tensor is kept between passes to know this, only each sequence's
        row and first real position: the rows' own views say whether they are still intact
        (same storage, offset and shape: an undo's crop or a re-read changes them), and the
        batch's tensors, room included (see _RoomyLayer), are rebuilt from the storage they
        share. Positions past `length` in that storage are the room: only the last pass's
        batch could have written there, and it is this one."""
        rows = self._last_rows
        if len(requests) != len(rows) or any(request.sequence not in rows for request in requests):
            return None
        placed = sorted(requests, key=lambda request: rows[request.sequence][0])
        batch_size, length = len(rows), self._last_length
        caches: list[DynamicCache] = [request.cache for request in placed]  # type: ignore[misc]
        layers: list[tuple[torch.Tensor, ...]] = []
        for index in range(len(caches[0].layers)):
            whole: list[torch.Tensor] = []  # this layer's keys, then values, of the whole batch, room included
            for name in ("keys", "values"):
                first = getattr(caches[0].layers[index], name)
                batch = _rows_with_room(first, batch_size)  # (B, heads, capacity, head_dim) or None
                if batch is None or batch.shape[2] < length:
                    return None
                _, heads, _, head_dim = batch.shape
                ptr, stride = _storage_ptr(batch), batch.stride()  # read once: the loop runs per row
                for row, (request, cache) in enumerate(zip(placed, caches, strict=True)):
                    view = getattr(cache.layers[index], name)
                    start = rows[request.sequence][1]
                    if (
                        _storage_ptr(view) != ptr
                        or tuple(view.shape) != (1, heads, length - start, head_dim)
                        or view.stride() != stride
                        or view.storage_offset() != row * stride[0] + start * head_dim
                        or request.cached != length - start
                    ):
                        return None
                whole.append(batch)
            layers.append(tuple(whole))
        return placed, _batch_cache_of(layers, length)

    def _padded_cache(self, requests: list[ForwardRequest]) -> DynamicCache:
        """The requests' caches in one, left-padded to the longest: (B, heads, longest, head_dim) per
        layer, with room for DECODE_ROOM more positions after them."""
        lengths = [request.cached for request in requests]
        longest, batch_size = max(lengths), len(requests)
        capacity = longest + DECODE_ROOM
        caches: list[DynamicCache] = [request.cache for request in requests]  # type: ignore[misc]
        layers: list[tuple[torch.Tensor, ...]] = []
        for index, first in enumerate(caches[0].layers):
            keys = first.keys.new_empty((batch_size, first.keys.shape[1], capacity, first.keys.shape[3]))
            values = first.values.new_empty((batch_size, first.values.shape[1], capacity, first.values.shape[3]))
            for row, (cache, length) in enumerate(zip(caches, lengths, strict=True)):
                pad = longest - length
                # Masked out, but zeroed all the same: uninitialised memory may hold NaNs,
                # and a masked NaN still poisons the attention's matmul.
                keys[row, :, :pad] = 0
                values[row, :, :pad] = 0
                keys[row, :, pad:longest] = cache.layers[index].keys[0]
                values[row, :, pad:longest] = cache.layers[index].values[0]
            layers.append((keys, values))
        return _batch_cache_of(layers, longest)

    def _pass_and_split(
        self,
        requests: list[ForwardRequest],
        starts: list[int],
        owns: list[Cache | None],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Cache | None = None,
        rows: list[int] | None = None,
    ) -> None:
        """One batched pass; each request gets its row: its distribution's summary and its own cache.

        Request i reads row `rows[i]` of the batch (row i when `rows` is None). Its cache becomes
        that row of the batch's cache from `starts[i]` on (views, padding dropped), in `owns[i]`
        or, for None, a new DynamicCache."""
        started = time.perf_counter()
        output = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        # (B, vocab): every row's last position is its newest real token. Summarised here, for
        # the whole batch at once, not by each session's thread (see tokstep.core.distribution).
        summaries = summarize(output.logits[:, -1])
        forward_ms = _elapsed_ms(started, output.logits)
        batched_layers = output.cache.layers
        rows = list(range(len(requests))) if rows is None else rows
        # Where each sequence sits in this batch, for _previous_batch (ints only: no tensor kept).
        # Sequences that share a row (identical prompts) cannot take the batch's cache as it is.
        shared = len(set(rows)) < len(rows)
        placed = zip(requests, rows, starts, strict=True)
        self._last_rows = {} if shared else {request.sequence: (row, start) for request, row, start in placed}
        self._last_length = batched_layers[0].keys.shape[2]
        for row, request, start, own in zip(rows, requests, starts, owns, strict=True):
            # (1, heads, positions, head_dim) per layer: this row's keys and values, padding dropped.
            row_layers = [
                (batched.keys[row : row + 1, :, start:], batched.values[row : row + 1, :, start:])
                for batched in batched_layers
            ]
            if own is None:
                own = _cache_of(row_layers)
            else:
                for layer, (keys, values) in zip(own.layers, row_layers, strict=True):
                    layer.keys, layer.values = keys, values
            request.result = ForwardResult(own, summaries[row], forward_ms)


def _cache_of(layers: Sequence[tuple[torch.Tensor, ...]]) -> DynamicCache:
    """A DynamicCache whose layers hold exactly these (keys, values) tensors, not copies of them.

    Made from empty slices of them (which sets each layer up: dtype, device, initialised),
    then pointed at the tensors themselves."""
    cache = DynamicCache(ddp_cache_data=[(keys[:, :, :0], values[:, :, :0]) for keys, values in layers])
    for layer, (keys, values) in zip(cache.layers, layers, strict=True):
        layer.keys, layer.values = keys, values
    return cache


class _RoomyLayer(DynamicLayer):
    """A pass's cache layer with room after its positions: the pass writes its new keys and values
    into the room in place, and makes new room (one copy) only when it is full.

    `keys` and `values` are the first `length` positions of (B, heads, capacity, head_dim)
    tensors. Writing in place is safe because nothing else reaches past `length` there: the
    sequences' own caches are views of their rows up to `length`, and the batcher builds this
    layer only over its own last batch (ForwardBatcher._previous_batch), a fresh padded one
    (_padded_cache), the room a sequence stepping alone was last given
    (ForwardBatcher._alone_layers), or views with no room, which the first update copies into
    new room."""

    def __init__(self, keys_room: torch.Tensor, values_room: torch.Tensor, length: int) -> None:
        super().__init__()
        # What lazy_initialization would set, without the empty tensors it makes (one per step).
        self.device, self.is_initialized = keys_room.device, True
        self.keys_room, self.values_room = keys_room, values_room
        self.keys, self.values = keys_room[:, :, :length], values_room[:, :, :length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # key_states, value_states: (B, heads, new, head_dim)
        length, new = self.keys.shape[-2], key_states.shape[-2]
        if length + new > self.keys_room.shape[-2]:
            self.keys_room = _with_room(self.keys, length + new + DECODE_ROOM)
            self.values_room = _with_room(self.values, length + new + DECODE_ROOM)
        self.keys_room[:, :, length : length + new] = key_states
        self.values_room[:, :, length : length + new] = value_states
        self.keys, self.values = self.keys_room[:, :, : length + new], self.values_room[:, :, : length + new]
        return self.keys, self.values


def _with_room(states: torch.Tensor, capacity: int) -> torch.Tensor:
    """`states` (B, heads, length, head_dim) copied into the start of a (B, heads, capacity, head_dim) tensor."""
    room = states.new_empty((*states.shape[:2], capacity, states.shape[3]))
    room[:, :, : states.shape[2]] = states
    return room


def _storage_ptr(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _rows_with_room(view: torch.Tensor, rows: int) -> torch.Tensor | None:
    """The whole (rows, heads, capacity, head_dim) tensor laid out contiguously from the start of
    `view`'s storage, when that storage holds exactly `rows` such rows; `view` is (B, heads,
    length, head_dim) and capacity follows from the storage's size."""
    _, heads, _, head_dim = view.shape
    nbytes = view.untyped_storage().nbytes()
    capacity = nbytes // (rows * heads * head_dim * view.element_size())
    stride = (heads * capacity * head_dim, capacity * head_dim, head_dim, 1)
    if nbytes != rows * stride[0] * view.element_size():
        return None
    return view.as_strided((rows, heads, capacity, head_dim), stride, 0)


def _room_of(view: torch.Tensor, ptr: int) -> torch.Tensor | None:
    """The whole (1, heads, capacity, head_dim) tensor that `view` (1, heads, length, head_dim)
    starts, when its storage is at `ptr` and holds one such row with room past `length`."""
    if _storage_ptr(view) != ptr or view.shape[0] != 1 or view.storage_offset() != 0:
        return None
    row = _rows_with_room(view, 1)
    if row is None or row.shape[2] <= view.shape[2] or view.stride()[1:] != row.stride()[1:]:
        return None
    return row


def _batch_cache_of(rooms: Sequence[tuple[torch.Tensor, ...]], length: int) -> DynamicCache:
    """A cache for a batched pass over (keys, values) tensors whose first `length` positions are
    filled and the rest is room (see _RoomyLayer)."""
    cache = _cache_of([(keys[:, :, :length], values[:, :, :length]) for keys, values in rooms])
    cache.layers = [_RoomyLayer(keys, values, length) for keys, values in rooms]
    return cache


def _elapsed_ms(started: float, logits: torch.Tensor) -> float:
    if logits.device.type == "cuda":
        torch.cuda.synchronize(logits.device)  # the pass ran asynchronously: wait for it to end
    return (time.perf_counter() - started) * 1000.0
