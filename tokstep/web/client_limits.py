"""Fair share per client: how many runs a client streams at once, and how many tokens a minute.

A run is a `/generate` stream, or a page's (or its chat's) Auto-run. Each client (tokstep.web.clients:
an API caller by address, a page session by tab) has

  - a cap on its runs at once (`api_runs` per address, `page_runs` per tab), and
  - a budget of `tokens_per_minute`: a token bucket that holds that many tokens and refills at
    that rate. A run takes the tokens it asks for (its `max_new_tokens`, or Auto-run's count)
    out of its client's bucket when it starts, and gives back what it did not write when it ends
    (it ended at the end of text, was stopped, or its client went away).

A run past either bound is refused when its event starts, before anything else (no model is loaded,
no prompt read, no pass run), with an `OverShareError` that says why and when to retry; the refused
event leaves Gradio's queue at once, and other clients are not slowed. A run that starts never stops
for the budget: it took its tokens up front, so nothing is cut off half-way. The queue's order is
Gradio's (first come, first served); the passes' order is the batcher's, which takes clients in turn
when more wait than fit in a pass (tokstep.runtimes.scheduler). The web layer names the client on
each stepper (`TokenStepper.client`) so that the batcher knows whose sequence a pass is.

The defaults, and why a class never meets them (docs/deploy.md, "Fair share per client"):

  - 4 runs at once per address: a person calling the API runs one or two at a time; 80 at once is
    a flood. A class calling `/generate` from one school network shares an address: raise it.
  - 4 Auto-runs at once per tab: a tab runs the page's and the chat's, and a stopped one takes up to
    one pause (2 s at the slowest pace) to end while the next starts.
  - 6,000 tokens a minute per client: a page's Auto-run at its fastest pace (20 tokens a second)
    writes 1,200; an API caller may stream 100 tokens a second on average, a fifth of what a CPU
    Space serves a class; 80 streams of 900 tokens (72,000) are refused after the first 6,000.
  - 256 new tokens at most per `/generate` run (`max_api_tokens`), as many as the page's Auto-run.

Settings come from app.py's flags, else the environment (`FairShare.from_env`), as the other serving
settings do (tokstep.web.deployment).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import gradio as gr

from tokstep.web.checks import titled
from tokstep.web.clients import API, address_for, session_for
from tokstep.web.constants import MAX_AUTORUN_TOKENS

LOG = logging.getLogger("tokstep")

DEFAULT_API_RUNS = 4
DEFAULT_PAGE_RUNS = 4
DEFAULT_TOKENS_PER_MINUTE = 6000
DEFAULT_MAX_API_TOKENS = MAX_AUTORUN_TOKENS
_OFF, _ON = {"0", "false", "no", "off", ""}, {"1", "true", "yes", "on"}
# Idle clients with a full bucket are forgotten once this many clients are known (they would start
# over with a full bucket anyway): a server that met a million addresses keeps no million records.
PRUNE_AT = 1024
# An event counted as it joined the queue (ClientLimits.api_join) stops counting when its run starts,
# or after this long if it never does (its client went away and Gradio dropped it unrun).
WAIT_EXPIRY_S = 120.0


@dataclass(frozen=True)
class FairShare:
    """What each client may take (see the module docstring); 0 turns a bound off."""

    api_runs: int = DEFAULT_API_RUNS  # /generate streams at once per address
    page_runs: int = DEFAULT_PAGE_RUNS  # Auto-runs at once per tab (the page's and the chat's)
    tokens_per_minute: int = DEFAULT_TOKENS_PER_MINUTE  # per client, over all its runs
    max_api_tokens: int = DEFAULT_MAX_API_TOKENS  # the most new tokens one /generate run may ask for
    trust_forwarded_for: bool = False  # the caller is the first X-Forwarded-For hop (a proxy in front)

    def __post_init__(self) -> None:
        for name in ("api_runs", "page_runs", "tokens_per_minute", "max_api_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number of 0 or more (0: no limit), got {value!r}.")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> FairShare:
        """The defaults, with TOKSTEP_MAX_API_RUNS, TOKSTEP_MAX_PAGE_RUNS, TOKSTEP_TOKENS_PER_MINUTE,
        TOKSTEP_MAX_API_TOKENS and TOKSTEP_TRUST_FORWARDED_FOR applied (ValueError for a bad value)."""

        def whole(name: str, default: int) -> int:
            value = env.get(name, "").strip()
            if value and not value.isdigit():
                raise ValueError(f"{name} must be a whole number (0: no limit), got {value!r}.")
            return int(value) if value else default

        trust = env.get("TOKSTEP_TRUST_FORWARDED_FOR", "").strip().lower()
        if trust not in _OFF | _ON:
            raise ValueError(f"TOKSTEP_TRUST_FORWARDED_FOR must be 1 or 0, got {trust!r}.")
        return cls(
            api_runs=whole("TOKSTEP_MAX_API_RUNS", DEFAULT_API_RUNS),
            page_runs=whole("TOKSTEP_MAX_PAGE_RUNS", DEFAULT_PAGE_RUNS),
            tokens_per_minute=whole("TOKSTEP_TOKENS_PER_MINUTE", DEFAULT_TOKENS_PER_MINUTE),
            max_api_tokens=whole("TOKSTEP_MAX_API_TOKENS", DEFAULT_MAX_API_TOKENS),
            trust_forwarded_for=trust in _ON,
        )


class OverShareError(gr.Error):
    """A run refused because its client is past its share: a pop-up on the page, an `AppError` in
    gradio_client, HTTP 429 with `retry_after_s` on a plain route. A client's load, not a fault:
    one line in the console, no traceback."""

    http_status = 429

    def __init__(self, message: str, title: str, retry_after_s: int | None = None) -> None:
        LOG.warning("tokstep: %s: %s", title, message)
        super().__init__(titled(title, message), title=title, print_exception=False)
        self.retry_after_s = retry_after_s


@dataclass
class _Client:
    """One client's runs at once and token bucket."""

    tokens: float  # in the bucket as of `updated`
    updated: float  # clock seconds
    runs: int = 0
    # When each of its /generate events still waiting in Gradio's queue joined it (clock seconds).
    waiting: list[float] = field(default_factory=list)


class ClientLimits:
    """Every client's runs and token bucket, for one page (thread-safe: runs start in worker threads)."""

    def __init__(
        self,
        share: FairShare = FairShare(),  # noqa: B008 (frozen, so sharing the default is safe)
        clock: Callable[[], float] = time.monotonic,  # seconds; a test may pass a clock it moves itself
    ) -> None:
        self.share = share
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: dict[Hashable, _Client] = {}

    def api_run(self, request: Any, tokens: int) -> RunShare:
        """Admit a /generate run of up to `tokens` tokens for the caller of `request` (by address), or
        raise OverShareError. Use the result as a context manager around the run."""
        client = address_for(request, self.share.trust_forwarded_for)
        return self._admit(client, tokens, self.share.api_runs)

    def api_join(self, request: Any) -> None:
        """Count a /generate event of the caller of `request` joining Gradio's queue, or raise
        OverShareError when its runs streaming and its events waiting already make its cap.

        Checked as the event joins, before the queue holds it: a flood of joins would otherwise fill
        the queue (its bound on waiting events is for everyone together) before its runs are refused
        at their start, and the class behind it would be told the queue is full. The event stops
        waiting when its handler starts (`left_queue`); one that never starts (its client went)
        stops counting after WAIT_EXPIRY_S."""
        cap = self.share.api_runs
        if not cap:
            return
        client = address_for(request, self.share.trust_forwarded_for)
        with self._lock:
            known = self._refilled(client)
            now = self._clock()
            known.waiting = [joined for joined in known.waiting if now - joined < WAIT_EXPIRY_S]
            if known.runs + len(known.waiting) >= cap:
                message = too_many_runs(client, known.runs, cap, waiting=len(known.waiting))
                raise OverShareError(message, title="Too many runs")
            known.waiting.append(now)

    def left_queue(self, request: Any) -> None:
        """A /generate event of the caller of `request` left Gradio's queue: its handler started,
        whatever it then does (admitted, refused, failed). It no longer counts as waiting."""
        client = address_for(request, self.share.trust_forwarded_for)
        with self._lock:
            known = self._clients.get(client)
            if known is not None and known.waiting:
                known.waiting.pop(0)

    def page_run(self, request: Any, tokens: int) -> RunShare:
        """Admit an Auto-run of up to `tokens` tokens for the tab of `request`, or raise OverShareError."""
        client = session_for(request, self.share.trust_forwarded_for)
        return self._admit(client, tokens, self.share.page_runs if client[0] != API else self.share.api_runs)

    def runs(self, client: Hashable) -> int:
        """How many runs `client` (a key of tokstep.web.clients) has going now."""
        with self._lock:
            known = self._clients.get(client)
            return known.runs if known is not None else 0

    def _admit(self, client: tuple[str, str], tokens: int, cap: int) -> RunShare:
        rate = self.share.tokens_per_minute
        with self._lock:
            known = self._refilled(client)
            if cap and known.runs >= cap:
                raise OverShareError(too_many_runs(client, known.runs, cap), title="Too many runs")
            if rate:
                if tokens > rate:
                    message = (
                        f"This run asks for up to {tokens:,} tokens, more than a client may have in a minute "
                        f"here ({rate:,}). Ask for at most {rate:,}."
                    )
                    raise OverShareError(message, title="Too many tokens")
                if known.tokens < tokens:
                    retry_s = max(1, math.ceil((tokens - known.tokens) * 60 / rate))
                    raise OverShareError(too_many_tokens(client, tokens, known.tokens, rate, retry_s),
                                         title="Too many tokens", retry_after_s=retry_s)  # fmt: skip
                known.tokens -= tokens
            known.runs += 1
        return RunShare(self, client, tokens)

    def _refilled(self, client: Hashable) -> _Client:
        """`client`'s record with its bucket refilled to now (the lock held); a new one is full."""
        now, rate = self._clock(), self.share.tokens_per_minute
        known = self._clients.get(client)
        if known is None:
            if len(self._clients) >= PRUNE_AT:
                self._prune(now)
            known = self._clients[client] = _Client(tokens=float(rate), updated=now)
        known.tokens = min(float(rate), known.tokens + (now - known.updated) * rate / 60)
        known.updated = now
        return known

    def _prune(self, now: float) -> None:
        rate = self.share.tokens_per_minute
        for key, known in list(self._clients.items()):
            full = known.tokens + (now - known.updated) * rate / 60 >= rate
            if known.runs == 0 and full and not any(now - joined < WAIT_EXPIRY_S for joined in known.waiting):
                del self._clients[key]

    def _ended(self, client: Hashable, unused: int) -> None:
        with self._lock:
            known = self._refilled(client)
            known.runs -= 1
            known.tokens = min(float(self.share.tokens_per_minute), known.tokens + unused)


class RunShare:
    """One admitted run: call `wrote()` for each token it writes; on leaving the `with` block the
    run no longer counts against its client's cap, and the tokens it did not write go back."""

    def __init__(self, limits: ClientLimits, client: Hashable, tokens: int) -> None:
        self.client = client
        self.tokens = tokens
        self.written = 0
        self._limits = limits
        self._open = True

    def wrote(self, count: int = 1) -> None:
        self.written += count

    def __enter__(self) -> RunShare:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._open:  # once, however the run ends
            self._open = False
            self._limits._ended(self.client, max(0, self.tokens - self.written))


def who(client: tuple[str, str]) -> str:
    return "This address" if client[0] == API else "This tab"


def too_many_runs(client: tuple[str, str], runs: int, cap: int, waiting: int = 0) -> str:
    plural = "s" if runs != 1 else ""
    what = f"run{plural} streaming" if client[0] == API else f"Auto-run{plural} going"
    if waiting:
        what += f" and {waiting} waiting in the queue"
    return f"{who(client)} already has {runs} {what}; at most {cap} run at once. Wait for one to end, then retry."


def too_many_tokens(client: tuple[str, str], tokens: int, left: float, rate: int, retry_s: int) -> str:
    return (
        f"{who(client)} has {int(left):,} of its {rate:,} tokens a minute left, and this run asks for up to "
        f"{tokens:,}. Retry in {retry_s} s, or ask for fewer tokens."
    )
