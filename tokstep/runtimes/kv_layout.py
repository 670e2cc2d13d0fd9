"""How a batched pass lays out its sequences' KV caches: padding, room to append in place, reuse.

The scheduler (tokstep.runtimes.scheduler) decides which requests share a pass; `BatchLayout`
runs that pass:

  - Decode requests (one new token on top of a cache whose layers are plain `DynamicLayer`s)
    run together: their caches are left-padded to the longest one, an attention mask hides
    the padding, and each row gets its own position id.
  - Prefills (a prompt, or a sequence read again after its cache was released) run together
    too, left-padded the same way, so a class that starts at once gets its first tokens
    after one pass, not thirty.
  - Anything else (caches that cannot be padded: sliding windows, recurrent state) runs as
    one sequence's pass (`forward_one`).

Each sequence keeps its own `DynamicCache`; after a batched pass its layers point at its row
of the batch's cache (a view: no copy), and `undo`'s crop works on it as on any cache. A
pass appends its new keys and values into room kept after the positions (see _RoomyLayer):
the batch's own, or, for a sequence stepping alone, a row of its own; never where another
sequence's view reaches. Whether the next pass can take the last batch's cache as it is is
told from the sequences' own views (storage, offset, shape), so no tensor is kept between
passes for it.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer

from tokstep.core.distribution import summarize
from tokstep.core.forward import ForwardResult, PendingPass, elapsed_ms, model_device, one_pass
from tokstep.runtimes.counters import PassCounters

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


def chunks(requests: list[PendingPass], max_tokens: int) -> list[list[PendingPass]]:
    """`requests` in order, cut into groups whose padded size (rows x longest) stays within max_tokens."""
    groups: list[list[PendingPass]] = []
    for request in requests:
        group = groups[-1] if groups else None
        if group is not None and (len(group) + 1) * max(len(request.ids), *(len(r.ids) for r in group)) <= max_tokens:
            group.append(request)
        else:
            groups.append([request])
    return groups


class BatchLayout:
    """Runs one model's passes over one or many sequences, and remembers how the last batch was
    laid out (row and first position of each sequence: ints only) so the next can reuse it."""

    def __init__(self, model: PreTrainedModel, counters: PassCounters) -> None:
        self.model = model
        self.counters = counters
        # Prompts can share a pass when the model's own cache is plain DynamicLayers, which
        # padding can line up (not sliding windows, not recurrent state).
        self.pads_prefills = is_batchable(DynamicCache(config=model.config), 1, check_initialized=False)
        self._last_rows: dict[Hashable, tuple[int, int]] = {}  # sequence -> (row, first real position)
        self._last_length = 0  # positions in the last batch's cache, padding included
        # The sequence whose step last ran alone, the positions it then held, and where the
        # storages with room behind its keys and values are (per layer): see alone_layers.
        self._last_alone: tuple[Hashable, int, list[tuple[int, int]]] | None = None

    def forward_one(self, request: PendingPass) -> None:
        """One sequence: a prompt, a re-read, or a step whose cache cannot be padded, or a step
        alone (which appends in place: see alone_layers)."""
        cache, roomy = request.cache, self.alone_layers(request)
        if roomy is None:
            request.result = one_pass(self.model, request.ids, cache)
            return
        # The sequence's own cache runs the pass with the roomy layers in place of its own,
        # whose keys and values then become views of them.
        own_layers, cache.layers = cache.layers, roomy  # type: ignore[union-attr]
        try:
            result = one_pass(self.model, request.ids, cache)
            for own, layer in zip(own_layers, roomy, strict=True):
                own.keys, own.values = layer.keys, layer.values
        finally:
            cache.layers = own_layers  # type: ignore[union-attr]
        ptrs = [(_storage_ptr(layer.keys_room), _storage_ptr(layer.values_room)) for layer in roomy]
        self._last_alone = (request.sequence, request.cached + 1, ptrs)
        request.result = ForwardResult(cache, result.summary, result.forward_ms)

    def alone_layers(self, request: PendingPass) -> list[_RoomyLayer] | None:
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

    def forward_prefills(self, requests: list[PendingPass]) -> None:
        """Many prompts read in one pass: left-padded to the longest, padding masked out.

        Identical prompts are read once: a class that opens the page and presses Auto-run sends
        the default prompt thirty times. Their sequences then share that row's keys and values
        (views: the next positions of each go into room past them, see _RoomyLayer)."""
        row_of: dict[tuple[int, ...], int] = {}
        rows = [row_of.setdefault(tuple(request.ids), len(row_of)) for request in requests]
        prompts = [list(ids) for ids in row_of]  # one per row, in row order
        lengths = [len(ids) for ids in prompts]
        longest, batch_size = max(lengths), len(prompts)
        device = model_device(self.model)
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

    def forward_decodes(self, requests: list[PendingPass]) -> None:
        """Many sequences' next token in one pass, each at its own position."""
        previous = self._previous_batch(requests)
        if previous is not None:
            # The same sequences as the last pass, untouched since: its cache is already padded.
            requests, padded = previous
            self.counters.reused_batches += 1
        else:
            padded = self._padded_cache(requests)
        lengths = [request.cached for request in requests]
        longest, batch_size = max(lengths), len(requests)
        device = model_device(self.model)
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

    def _previous_batch(self, requests: list[PendingPass]) -> tuple[list[PendingPass], DynamicCache] | None:
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

    def _padded_cache(self, requests: list[PendingPass]) -> DynamicCache:
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
        requests: list[PendingPass],
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
        forward_ms = elapsed_ms(started, output.logits)
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
    layer only over its own last batch (BatchLayout._previous_batch), a fresh padded one
    (_padded_cache), the room a sequence stepping alone was last given
    (BatchLayout.alone_layers), or views with no room, which the first update copies into
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
