"""Fair share per client: runs at once, tokens a minute, /generate's ceiling, who a client is, and
the batcher taking clients in turn, on the tiny model and real launched servers."""

from __future__ import annotations

import math
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import gradio as gr
import httpx
import pytest
from conftest import SETTINGS, TINY_CONTEXT, serving
from gradio_client import Client
from gradio_client.exceptions import AppError, ValidationError
from starlette.requests import Request
from test_server import greedy

from tokstep.core.forward import PendingPass, SequenceKey
from tokstep.core.model import LanguageModel
from tokstep.core.stepper import TokenStepper
from tokstep.runtimes.in_process import InProcessRuntime
from tokstep.runtimes.scheduler import in_turn
from tokstep.web.client_limits import ClientLimits, FairShare, OverShareError
from tokstep.web.clients import address_for, session_for
from tokstep.web.page import ServerLimits, create_demo
from tokstep.web.stream_route import PATH as STREAM_PATH

PROMPT = "Once upon a time"


# --- who a client is ----------------------------------------------------------------------------


def http_request(host: str, forwarded_for: str | None = None, session: str | None = None) -> gr.Request:
    """A real gr.Request over a real Starlette request, as Gradio hands one to a handler."""
    headers = [(b"x-forwarded-for", forwarded_for.encode())] if forwarded_for is not None else []
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "client": (host, 50000)}
    return gr.Request(request=Request({**scope, "query_string": b""}), session_hash=session)


def test_x_forwarded_for_names_the_caller_only_where_trusted():
    request = http_request("10.0.0.1", forwarded_for="203.0.113.7, 10.0.0.9")
    assert address_for(request, trust_forwarded_for=False) == ("address", "10.0.0.1")
    assert address_for(request, trust_forwarded_for=True) == ("address", "203.0.113.7")  # the first hop
    # No header, or an empty one: the connection's address, trusted or not.
    assert address_for(http_request("10.0.0.1"), trust_forwarded_for=True) == ("address", "10.0.0.1")
    assert address_for(http_request("10.0.0.1", forwarded_for=" "), trust_forwarded_for=True) == ("address", "10.0.0.1")


def test_a_page_session_is_its_tab_and_a_call_without_one_its_address():
    assert session_for(http_request("10.0.0.1", session="tab-1"), trust_forwarded_for=False) == ("session", "tab-1")
    assert session_for(http_request("10.0.0.1"), trust_forwarded_for=False) == ("address", "10.0.0.1")


def test_fair_share_settings_come_from_the_environment():
    assert FairShare.from_env({}) == FairShare()
    env = {
        "TOKSTEP_MAX_API_RUNS": "8",
        "TOKSTEP_MAX_PAGE_RUNS": " 2 ",
        "TOKSTEP_TOKENS_PER_MINUTE": "0",
        "TOKSTEP_MAX_API_TOKENS": "100",
        "TOKSTEP_TRUST_FORWARDED_FOR": "1",
    }
    assert FairShare.from_env(env) == FairShare(
        api_runs=8, page_runs=2, tokens_per_minute=0, max_api_tokens=100, trust_forwarded_for=True
    )
    with pytest.raises(ValueError, match="TOKSTEP_MAX_API_RUNS must be a whole number"):
        FairShare.from_env({"TOKSTEP_MAX_API_RUNS": "lots"})
    with pytest.raises(ValueError, match="TOKSTEP_TRUST_FORWARDED_FOR must be 1 or 0"):
        FairShare.from_env({"TOKSTEP_TRUST_FORWARDED_FOR": "maybe"})


# --- the token bucket, on a clock the test moves ----------------------------------------------------


class Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tokens_a_minute_are_taken_at_the_start_and_what_a_run_did_not_write_comes_back():
    clock, rate = Clock(), 600  # 10 tokens a second
    limits = ClientLimits(FairShare(tokens_per_minute=rate), clock=clock)
    tab = http_request("10.0.0.1", session="tab-1")
    with limits.page_run(tab, 500) as run:
        run.wrote(200)  # it ends after 200 of its 500 tokens (stopped, or the end of text)
    left = rate - 200  # the 300 it did not write came back
    with limits.page_run(tab, left) as run:  # exactly what is left is granted, and written
        run.wrote(left)
    asked = 250
    clock.now += 5  # 5 s refill 50 tokens: 50 in the bucket now
    in_bucket = 5 * rate / 60
    with pytest.raises(OverShareError) as refused:
        limits.page_run(tab, asked)
    retry_s = math.ceil((asked - in_bucket) * 60 / rate)
    assert str(refused.value.message) == (
        f"Too many tokens: This tab has {int(in_bucket)} of its {rate} tokens a minute left, and this run asks "
        f"for up to {asked}. Retry in {retry_s} s, or ask for fewer tokens."
    )
    assert (refused.value.http_status, refused.value.retry_after_s) == (429, retry_s)
    clock.now += retry_s  # and then it is granted
    with limits.page_run(tab, asked):
        pass
    # A run that asks for more than a minute's tokens can never start: it is told the most it may ask.
    with pytest.raises(OverShareError, match=re.escape(f"more than a client may have in a minute here ({rate:,})")):
        limits.page_run(tab, rate + 1)


def test_runs_at_once_are_counted_per_client_until_each_ends():
    limits = ClientLimits(FairShare(page_runs=2))
    tab, other_tab = http_request("10.0.0.1", session="tab-1"), http_request("10.0.0.1", session="tab-2")
    first, second = limits.page_run(tab, 1), limits.page_run(tab, 1)
    with pytest.raises(OverShareError) as refused:
        limits.page_run(tab, 1)
    assert refused.value.message == (
        "Too many runs: This tab already has 2 Auto-runs going; at most 2 run at once. Wait for one to end, then retry."
    )
    with limits.page_run(other_tab, 1):  # another tab behind the same address is not held back
        assert limits.runs(("session", "tab-2")) == 1
    with first:
        pass
    with limits.page_run(tab, 1), second:  # one ended: room for one more
        assert limits.runs(("session", "tab-1")) == 2
    assert limits.runs(("session", "tab-1")) == 0


# --- the batcher takes clients in turn ------------------------------------------------------------


@contextmanager
def recording_passes(lm: LanguageModel) -> Iterator[list[list[int]]]:
    """The ids each model call reads (one list per call: a decode pass reads one id per row)."""
    calls: list[list[int]] = []

    def record(_module, _args, kwargs):
        calls.append(kwargs["input_ids"][:, -1].tolist())

    hook = lm.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield calls
    finally:
        hook.remove()


def test_when_more_wait_than_fit_a_pass_clients_take_turns(tiny_lm):
    """Client A has four sequences waiting, B and C one each, and a pass takes two: A gets one row a
    pass, as B and C do, and B and C are in the first two passes (first come, first served would
    put them last, after all of A's)."""
    runtime = InProcessRuntime(max_batch=2)
    lm = runtime.serve(tiny_lm)
    clients = ["A", "A", "A", "A", "B", "C"]  # in the order their steps arrive
    steppers = []
    for number, client in enumerate(clients):
        stepper = TokenStepper.from_text(lm, f"{PROMPT} {number}")
        stepper.client = client
        # Each picks a token of its own (ids 1000, 1001, ...), so its next pass reads an id that
        # says whose it is; the step each thread takes below is then a one-token decode.
        stepper.step(5, token_id=1000 + number)
        steppers.append(stepper)
    # What each gets is what it would get alone.
    expected = [TokenStepper(tiny_lm, stepper.ids).step(5).token_id for stepper in steppers]
    batcher = lm.forward.batcher
    threads = [threading.Thread(target=stepper.step, args=(5,)) for stepper in steppers]
    with recording_passes(tiny_lm) as calls:
        with runtime.forward_lock:  # no pass runs while the steps queue, one after another
            for arrived, thread in enumerate(threads, start=1):
                thread.start()
                deadline = time.monotonic() + 10
                while batcher.waiting < arrived:
                    assert time.monotonic() < deadline, "the step did not queue"
                    time.sleep(0.001)
        for thread in threads:
            thread.join(timeout=30)
    ids_of = {client: [1000 + n for n, c in enumerate(clients) if c == client] for client in "ABC"}
    a = ids_of["A"]
    assert (
        [sorted(call) for call in calls]
        == [
            sorted([a[0], *ids_of["B"]]),  # one of A's and B's: each client one row
            sorted([*ids_of["C"], a[1]]),  # C was never served: first; then A
            sorted(a[2:]),  # only A is left
        ]
    )
    assert [stepper.steps[-1].token_id for stepper in steppers] == expected


def test_turns_go_to_the_clients_served_least_recently():
    def request(client: str, sequence: int) -> PendingPass:
        return PendingPass([1], None, 0, SequenceKey(sequence, client))

    queue = [request("A", 1), request("A", 2), request("B", 3), request("C", 4), request("A", 5)]
    # Nobody served yet: arrival order of each client's first request, one each per round.
    assert [r.sequence.stepper for r in in_turn(queue, {}, 3)] == [1, 3, 4]
    # A and B were served in the last crowded pass, C earlier: C first, then A and B.
    assert [r.sequence.stepper for r in in_turn(queue, {"A": 7, "B": 7, "C": 6}, 2)] == [1, 4]
    # Room for more than one round: A's next one joins in the second round.
    assert [r.sequence.stepper for r in in_turn(queue, {}, 4)] == [1, 2, 3, 4]
    # A sequence without a client is a client of its own.
    lone = [PendingPass([1], None, 0, SequenceKey(n)) for n in range(3)]
    assert in_turn(lone, {}, 2) == lone[:2]


# --- on a real server ----------------------------------------------------------------------------


@dataclass
class Served:
    url: str
    lm: LanguageModel
    runtime: InProcessRuntime

    def client(self, forwarded_for: str | None = None) -> Client:
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else None
        return Client(self.url, verbose=False, headers=headers)

    def wait_for_queued_passes(self, count: int) -> None:
        """Wait until `count` passes wait for the model (the test holds it: they are admitted runs)."""
        deadline = time.monotonic() + 20
        while self.lm.forward.batcher.waiting < count:
            assert time.monotonic() < deadline, f"{self.lm.forward.batcher.waiting} of {count} passes queued"
            time.sleep(0.01)


def refusal(client: Client, *arguments: object, api_name: str) -> str:
    """The message a call is refused with: as it joins the queue (tokstep.web.queue_admission; a
    ValidationError in gradio_client) or as its run starts (an AppError). A call admitted instead
    fails the test (a TimeoutError) rather than hanging it: the tests hold the model while they call."""
    job = client.submit(*arguments, api_name=api_name)
    with pytest.raises((AppError, ValidationError)) as refused:
        job.result(timeout=20)
    if isinstance(refused.value, ValidationError):
        (line,) = [line for line in str(refused.value).splitlines() if line.startswith("- fair share: ")]
        return line.removeprefix("- fair share: ").strip("'\"")
    return str(refused.value)


@contextmanager
def fair_server(tiny_lm: LanguageModel, share: FairShare) -> Iterator[Served]:
    runtime = InProcessRuntime()
    lm = runtime.serve(tiny_lm)  # the page serves this very model: the test can see its batcher
    with serving(create_demo(lm, runtime=runtime, fair_share=share)) as url:
        yield Served(url, lm, runtime)


# Small bounds, so that a test meets them in a few tokens; each test calls from addresses of its own
# (X-Forwarded-For, trusted here), so the tests share one server and none spends another's budget.
SHARE = FairShare(api_runs=2, page_runs=1, tokens_per_minute=30, max_api_tokens=28, trust_forwarded_for=True)


@pytest.fixture(scope="module")
def share_server(tiny_lm) -> Iterator[Served]:
    with fair_server(tiny_lm, SHARE) as served:
        yield served


def test_a_client_past_its_runs_at_once_is_refused_at_once_while_its_runs_and_others_go_on(share_server, tiny_lm):
    flooder, other = share_server.client("198.51.100.1"), share_server.client("198.51.100.2")
    tokens = 10
    with share_server.runtime.forward_lock:  # no pass runs: the runs admitted wait for the model
        streams = [flooder.submit(PROMPT, tokens, api_name="/generate") for _ in range(SHARE.api_runs)]
        share_server.wait_for_queued_passes(SHARE.api_runs)
        # Refused while no pass can run: the refusal needs none.
        refused = refusal(flooder, PROMPT, tokens, api_name="/generate")
        others = other.submit(PROMPT, tokens, api_name="/generate")  # another client: admitted
        share_server.wait_for_queued_passes(SHARE.api_runs + 1)
    assert refused == (
        f"Too many runs: This address already has {SHARE.api_runs} runs streaming; at most {SHARE.api_runs} "
        "run at once. Wait for one to end, then retry."
    )
    alone = greedy(tiny_lm, PROMPT, tokens)
    for job in [*streams, others]:
        assert [update["token_id"] for update in job] == alone
    # Its runs ended: the flooder may run again.
    assert [u["token_id"] for u in flooder.submit(PROMPT, 2, api_name="/generate")] == alone[:2]


def test_a_client_past_its_tokens_a_minute_is_told_when_to_retry(share_server, tiny_lm):
    caller = share_server.client("198.51.100.3")
    rate, first = SHARE.tokens_per_minute, 20
    started = time.monotonic()
    assert len(list(caller.submit(PROMPT, first, api_name="/generate"))) == first
    message = refusal(caller, PROMPT, first, api_name="/generate")
    elapsed = time.monotonic() - started
    found = re.fullmatch(
        rf"Too many tokens: This address has (\d+) of its {rate} tokens a minute left, and this run asks for up "
        rf"to {first}\. Retry in (\d+) s, or ask for fewer tokens\.",
        message,
    )
    assert found, message
    left, retry_s = int(found[1]), int(found[2])
    # What is left: the minute's tokens less the first run's, and what came back meanwhile.
    assert rate - first <= left <= rate - first + elapsed * rate / 60
    # The wait: until the bucket holds the tokens asked for (it holds `left` to `left + 1`).
    assert math.ceil((first - left - 1) * 60 / rate) <= retry_s <= math.ceil((first - left) * 60 / rate)


def test_the_plain_route_refuses_a_client_past_its_share_with_429_and_when_to_retry(share_server):
    route = share_server.url.rstrip("/") + STREAM_PATH
    headers = {"X-Forwarded-For": "198.51.100.9"}
    body = {"prompt": PROMPT, "max_new_tokens": SHARE.tokens_per_minute - 2}
    with httpx.stream("POST", route, json=body, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        tokens = sum(1 for line in response.iter_lines() if line.startswith('data: {"text"'))
        assert tokens == body["max_new_tokens"]
    refused = httpx.post(route, json={"prompt": PROMPT, "max_new_tokens": 10}, headers=headers, timeout=60)
    answer = refused.json()
    assert refused.status_code == 429 and answer["title"] == "Too many tokens"
    assert answer["error"].startswith("Too many tokens: This address has") and "Retry in" in answer["error"]
    assert int(refused.headers["Retry-After"]) == answer["retry_after_s"] > 0
    over = httpx.post(route, json={"prompt": PROMPT, "max_new_tokens": SHARE.max_api_tokens + 1}, timeout=60)
    assert over.status_code == 400 and f"from 1 to {SHARE.max_api_tokens}" in over.json()["error"]


def test_tokens_a_run_did_not_write_come_back_when_it_ends(share_server, tiny_lm):
    caller = share_server.client("198.51.100.4")
    room = 4  # a prompt 4 tokens short of the context: a run of 20 writes 4 and ends
    long_prompt = " a" * (TINY_CONTEXT - room)
    assert len(TokenStepper.from_text(tiny_lm, long_prompt).ids) == TINY_CONTEXT - room
    updates = list(caller.submit(long_prompt, 20, api_name="/generate"))
    assert (len(updates), updates[-1]["stop_reason"]) == (room, "context_full")
    # 20 were taken, `room` written: the rest came back, so a run of all that is left may start.
    assert len(list(caller.submit(PROMPT, SHARE.tokens_per_minute - room, api_name="/generate"))) == (
        SHARE.tokens_per_minute - room
    )


def test_max_new_tokens_past_the_operators_ceiling_is_refused_with_the_ceiling(share_server):
    caller = share_server.client("198.51.100.5")
    ceiling = SHARE.max_api_tokens
    assert refusal(caller, PROMPT, ceiling + 1, api_name="/generate") == (
        f"Bad setting: max_new_tokens must be a whole number from 1 to {ceiling} (the most this server writes "
        f"in one run), got {ceiling + 1}."
    )
    assert len(list(caller.submit(PROMPT, ceiling, api_name="/generate"))) == ceiling


def test_a_tab_past_its_auto_runs_at_once_is_refused_and_another_tab_is_not(share_server):
    tab, other_tab = share_server.client(), share_server.client()  # one address, two sessions
    with share_server.runtime.forward_lock:
        running = tab.submit(PROMPT, 3, 20.0, *SETTINGS, api_name="/autorun")
        share_server.wait_for_queued_passes(1)
        refused = refusal(tab, PROMPT, 3, 20.0, *SETTINGS, api_name="/autorun")
        others = other_tab.submit(PROMPT, 3, 20.0, *SETTINGS, api_name="/autorun")
        share_server.wait_for_queued_passes(2)
    assert refused == (
        "Too many runs: This tab already has 1 Auto-run going; at most 1 run at once. Wait for one to end, then retry."
    )
    assert len(list(running)) == len(list(others)) == 3


def test_a_stopped_auto_run_gives_its_place_back(share_server):
    tab = share_server.client()
    running = tab.submit(PROMPT, 20, 5.0, *SETTINGS, api_name="/autorun")
    deadline = time.monotonic() + 20
    while len(running.outputs()) < 2:
        assert time.monotonic() < deadline, "the Auto-run did not start"
        time.sleep(0.02)
    running.cancel()  # as the page's Stop does: Gradio closes the run, which ends where it is
    # Its place comes back once the step in flight ends (a pause at most): the next one is admitted.
    while True:
        try:
            assert len(list(tab.submit(PROMPT, 2, 20.0, *SETTINGS, api_name="/autorun"))) == 2
            break
        except AppError as error:
            assert "Too many runs" in str(error) and time.monotonic() < deadline, error
            time.sleep(0.1)


def test_x_forwarded_for_is_ignored_unless_the_operator_trusts_it(tiny_lm, monkeypatch):
    # Gradio's server (uvicorn) itself takes the caller's address from X-Forwarded-For when the
    # connection comes from an address in FORWARDED_ALLOW_IPS (by default a proxy on this machine,
    # as the test's clients are). A public server's proxy is elsewhere: so is it here.
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "192.0.2.1")
    with fair_server(tiny_lm, FairShare(api_runs=1)) as served:
        with served.runtime.forward_lock:
            first = served.client("203.0.113.1").submit(PROMPT, 2, api_name="/generate")
            served.wait_for_queued_passes(1)
            # Another X-Forwarded-For, the same connection: the same caller.
            refused = refusal(served.client("203.0.113.2"), PROMPT, 2, api_name="/generate")
            assert "This address already has 1 run streaming" in refused
        assert len(list(first)) == 2


def test_a_trusted_x_forwarded_for_names_the_caller_by_its_first_hop(tiny_lm):
    with fair_server(tiny_lm, FairShare(api_runs=1, trust_forwarded_for=True)) as served:
        with served.runtime.forward_lock:
            jobs = [
                served.client(hop).submit(PROMPT, 2, api_name="/generate") for hop in ("203.0.113.1", "203.0.113.2")
            ]
            served.wait_for_queued_passes(2)  # two callers: both admitted
            refused = refusal(served.client("203.0.113.1, 10.0.0.7"), PROMPT, 2, api_name="/generate")
            assert "This address already has 1 run streaming" in refused
        assert [len(list(job)) for job in jobs] == [2, 2]


def test_a_flood_of_joins_from_one_address_leaves_the_queue_to_others(tiny_lm):
    # Four places in Gradio's queue for everyone: without the count at the door, ten joins from one
    # address would take them all, and the student after them would be told the queue is full.
    share = FairShare(api_runs=2, tokens_per_minute=0, trust_forwarded_for=True)
    runtime = InProcessRuntime()
    lm = runtime.serve(tiny_lm)
    demo = create_demo(lm, runtime=runtime, fair_share=share, limits=ServerLimits(max_queue=4))
    with serving(demo) as url:
        config = httpx.get(url.rstrip("/") + "/config", timeout=30).json()
        event = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "generate")

        def join(address: str) -> httpx.Response:
            arguments = [PROMPT, 3, False, 1.0, 0, 1.0, 0]  # the optional views left out
            body = {"data": arguments, "fn_index": event, "session_hash": secrets.token_hex(6)}
            return httpx.post(
                url.rstrip("/") + "/gradio_api/queue/join", json=body, headers={"X-Forwarded-For": address}, timeout=30
            )

        with runtime.forward_lock:  # nothing runs: every event admitted waits in the queue
            flood = [join("198.51.100.30") for _ in range(10)]
            student = join("198.51.100.31")
            # The REST route as curl calls it: an event id whose stream is the refusal.
            posted = httpx.post(
                url.rstrip("/") + "/gradio_api/call/generate", json={"data": [PROMPT, 3]},
                headers={"X-Forwarded-For": "198.51.100.30"}, timeout=30,
            )  # fmt: skip
            rest = httpx.get(url.rstrip("/") + f"/gradio_api/call/generate/{posted.json()['event_id']}", timeout=30)
    assert rest.text.startswith("event: error") and '"title": "Too many runs"' in rest.text
    assert [answer.status_code for answer in flood] == [200] * share.api_runs + [422] * (10 - share.api_runs)
    refused = flood[-1].json()
    assert refused["title"] == "Too many runs"
    assert (
        refused["error"].startswith("Too many runs: This address already has")
        and "at most 2 run at once" in refused["error"]
    )
    assert int(flood[-1].headers["Retry-After"]) > 0
    assert student.status_code == 200 and "event_id" in student.json()


def test_calls_refused_as_they_start_give_their_place_in_the_queue_back(share_server, tiny_lm):
    # Each call is counted as waiting when it joins the queue; one refused when it starts (a bad
    # argument, past the ceiling) must stop counting then, or a few would lock its caller out.
    caller = share_server.client("198.51.100.40")
    for _ in range(SHARE.api_runs + 2):
        assert "max_new_tokens must be a whole number" in refusal(caller, PROMPT, -1, api_name="/generate")
    assert [u["token_id"] for u in caller.submit(PROMPT, 3, api_name="/generate")] == greedy(tiny_lm, PROMPT, 3)
