"""The REST API as curl calls it: `POST /gradio_api/call/<name>` with a JSON body, then the event's
stream (`GET /gradio_api/call/<name>/<event_id>`, server-sent events), on a real launched server.

Optional arguments take their defaults, any number of leading arguments works, and every bad call
(a bad value, a malformed body, too many or too few arguments, an unknown name) ends in one
`event: error` whose message names what is wrong: never `{"error": null}`, never a traceback.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import ROOT, serving

import tokstep
from tokstep.core.model import LanguageModel
from tokstep.core.sampling import SamplingSettings
from tokstep.web import api
from tokstep.web.constants import DEFAULT_PROMPT
from tokstep.web.views import VIEW_OUTPUTS

PROMPT = "Once upon a time"
# /generate's arguments from its own signature: from `prompt` on (what the page binds comes first),
# less the request Gradio passes itself; and their defaults.
PARAMETERS = list(inspect.signature(api.generate).parameters.values())
ARGUMENTS = [
    parameter.name
    for parameter in PARAMETERS[[parameter.name for parameter in PARAMETERS].index("prompt") :]
    if "Request" not in str(parameter.annotation)
]
DEFAULTS = {parameter.name: parameter.default for parameter in PARAMETERS if parameter.name in ARGUMENTS[1:]}


def positional(**given: object) -> list[object]:
    """/generate's arguments in order, up to the last one given, the defaults for the others."""
    last = max(ARGUMENTS.index(name) for name in given)
    values = {"prompt": PROMPT, **DEFAULTS, **given}
    return [values[name] for name in ARGUMENTS[: last + 1]]


@pytest.fixture(scope="module")
def rest_url(tiny_lm: LanguageModel) -> Iterator[str]:
    """A real server whose /generate takes every argument, `model` too (the page offers a list: its own)."""
    from tokstep.web.page import create_demo

    with serving(create_demo(tiny_lm, models=[])) as served:
        yield served


def call(url: str, name: str, body: bytes | dict | list, by_name: bool = False) -> list[tuple[str, object]]:
    """What curl sees: POST the body, then read the event's stream to its end; (event, data) pairs."""
    route = f"{url.rstrip('/')}/gradio_api/call/{'v2/' if by_name else ''}{name}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    posted = httpx.post(route, content=content, headers={"Content-Type": "application/json"}, timeout=30)
    assert posted.status_code == 200, posted.text
    event_id = posted.json()["event_id"]
    events = []
    with httpx.stream("GET", f"{route}/{event_id}", timeout=60) as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event != "heartbeat":
                events.append((event, json.loads(line.removeprefix("data: "))))
                if event in ("complete", "error"):
                    break
    return events


def streamed_ids(events: list[tuple[str, object]]) -> list[int]:
    """The token ids of a /generate stream: one update per token, then `complete` repeats the last."""
    assert [event for event, _ in events][-1] == "complete", events
    return [data[0]["token_id"] for event, data in events if event == "generating"]


def error_of(events: list[tuple[str, object]]) -> str:
    assert len(events) == 1 and events[0][0] == "error", events
    message = events[0][1]["error"]
    assert isinstance(message, str) and message, events
    return message


def expected_ids(
    lm: LanguageModel, tokens: int, sampling: SamplingSettings | None = None, prompt: str = PROMPT
) -> list[int]:
    return [step.token_id for step in tokstep.generate_steps(lm, prompt, max_new_tokens=tokens, sampling=sampling)]


# A client that joins Gradio's queue itself (as the page's JavaScript does) with the arguments /generate
# took before its optional views: all but `model`, or all with it.
@pytest.mark.parametrize("count", [7, 8])
def test_a_queue_join_with_the_arguments_it_always_sent_gets_its_tokens(rest_url, tiny_lm, count):
    from bench.sse_client import fn_index, stream_outputs

    data = positional(max_new_tokens=3, model=tiny_lm.name)[:count]
    assert ARGUMENTS[count:] == ["model", "layers", "attention"][count - 7 :]  # what it leaves out

    async def updates() -> list[dict]:
        async with httpx.AsyncClient(timeout=60) as http:
            return [update async for update in stream_outputs(http, rest_url, fn_index(rest_url, "generate"), data)]

    # In a thread of its own: a browser test earlier in the session may leave an event loop on this one.
    with ThreadPoolExecutor(1) as pool:
        streamed = pool.submit(asyncio.run, updates()).result()
    assert [update["token_id"] for update in streamed] == expected_ids(tiny_lm, 3)
    assert not {"layers", "attention"} & set(streamed[-1])


def test_the_prompt_alone_streams_greedy_tokens_with_the_defaults(rest_url, tiny_lm):
    events = call(rest_url, "generate", {"data": [PROMPT]})
    assert DEFAULTS["sample"] is False  # so the defaults are greedy
    assert streamed_ids(events) == expected_ids(tiny_lm, DEFAULTS["max_new_tokens"])
    last = events[-1][1][0]
    assert last["stop_reason"] == "max_new_tokens" and last["chosen_by"] == "greedy"


@pytest.mark.parametrize("count", range(2, len(ARGUMENTS) + 1))
def test_any_number_of_leading_arguments_works(rest_url, tiny_lm, count):
    given = [PROMPT, 3, *list(DEFAULTS.values())[1:]][:count]
    assert streamed_ids(call(rest_url, "generate", {"data": given})) == expected_ids(tiny_lm, 3)


def test_sampling_arguments_left_out_take_their_defaults(rest_url, tiny_lm):
    defaults = SamplingSettings(
        temperature=DEFAULTS["temperature"], top_k=DEFAULTS["top_k"], top_p=DEFAULTS["top_p"], seed=DEFAULTS["seed"]
    )
    assert streamed_ids(call(rest_url, "generate", {"data": [PROMPT, 6, True]})) == expected_ids(tiny_lm, 6, defaults)
    chosen = SamplingSettings(temperature=0.8, top_k=50, top_p=0.95, seed=42)
    every = call(rest_url, "generate", {"data": [PROMPT, 6, True, 0.8, 50, 0.95, 42]})
    assert streamed_ids(every) == expected_ids(tiny_lm, 6, chosen)


def test_arguments_by_name_on_the_v2_route(rest_url, tiny_lm):
    events = call(rest_url, "generate", {"prompt": PROMPT, "max_new_tokens": 4}, by_name=True)
    assert streamed_ids(events) == expected_ids(tiny_lm, 4)


def test_the_model_argument_names_the_page_model(rest_url, tiny_lm):
    events = call(rest_url, "generate", {"data": positional(max_new_tokens=3, model=tiny_lm.name)})
    assert streamed_ids(events) == expected_ids(tiny_lm, 3)


BAD_CALLS = [
    # (what is sent, the route (by name or not), words the message must have)
    ({"data": [PROMPT, "ten"]}, False, ["max_new_tokens", "'ten'"]),
    ({"data": [PROMPT, 0]}, False, ["max_new_tokens", "from 1 to"]),
    ({"data": [PROMPT, 3, "yes"]}, False, ["sample", "true or false"]),
    ({"data": [PROMPT, 3, True, 0]}, False, ["temperature"]),
    ({"data": [PROMPT, 3, True, 1.0, -1]}, False, ["top_k"]),
    ({"data": positional(max_new_tokens=3, model="no-such-model")}, False, ["no-such-model", "not offered"]),
    ({"data": [123]}, False, ["prompt", "text", "int"]),
    ({"data": [""]}, False, ["prompt is empty"]),
    ({"data": []}, False, ["needs its argument prompt"]),
    ({"data": [PROMPT, 3, *DEFAULTS.values(), "one too many"]}, False, [f"at most {len(ARGUMENTS)} arguments", "got"]),
    (b"not json", False, ["not JSON"]),
    ({"prompt": PROMPT}, False, ['"data"', "list of arguments"]),
    ({"data": PROMPT}, False, ['"data" must be a list']),
    ({"max_new_tokens": 3}, True, ["needs its argument prompt"]),
    ({"prompt": PROMPT, "max_tokens": 3}, True, ['no argument named "max_tokens"']),
    ([PROMPT], True, ["JSON object of arguments by name"]),
]


@pytest.mark.parametrize(("body", "by_name", "words"), BAD_CALLS)
def test_a_bad_call_gets_an_error_event_that_says_what_is_wrong(rest_url, capfd, body, by_name, words):
    message = error_of(call(rest_url, "generate", body, by_name=by_name))
    for word in words:
        assert word in message, message
    assert "Traceback" not in capfd.readouterr().err  # a client's mistake is one line in the log


def test_a_call_to_an_endpoint_that_does_not_exist_names_those_that_do(rest_url):
    message = error_of(call(rest_url, "genrate", {"data": [PROMPT]}))
    assert "/genrate" in message and "/generate" in message


@pytest.mark.parametrize("route", ["gradio_api/run/generate", "gradio_api/api/generate"])
def test_the_routes_that_would_skip_the_queue_are_closed(rest_url, route):
    # Past the queue, a call would escape its concurrency limits and its bound on waiting events.
    response = httpx.post(rest_url.rstrip("/") + "/" + route, json={"data": ["Once upon a time", 3]}, timeout=30)
    assert response.status_code == 404 and "join the queue" in response.json()["detail"]


def test_the_page_events_take_their_defaults_from_curl(rest_url, tiny_lm):
    """The page's own (undocumented) events: every argument has the page's default, so an empty list
    steps the default prompt once."""
    events = call(rest_url, "step", {"data": []})
    assert events[-1][0] == "complete", events
    stepper = tokstep.TokenStepper.from_text(tiny_lm, DEFAULT_PROMPT)
    stepper.step()
    assert events[-1][1][VIEW_OUTPUTS.index("text")] == stepper.text()  # the text so far (REST sends the state too)


def readme_calls() -> list[tuple[str, bool, dict]]:
    """The calls README.md's "Calling the API from curl" shows: (endpoint, by name, body)."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("### Calling the API from curl\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    posts = re.findall(r"-X POST http://127\.0\.0\.1:7860/gradio_api/call/(v2/)?(\w+).*?-d '([^']+)'", section, re.S)
    return [(name, bool(v2), json.loads(body)) for v2, name, body in posts]


def test_the_readme_curl_calls_stream_their_tokens(rest_url, tiny_lm):
    calls = readme_calls()
    assert len(calls) == 2
    for name, by_name, body in calls:
        arguments = body if by_name else dict(zip(ARGUMENTS, body["data"], strict=False))
        sampling = None
        if arguments.get("sample"):
            sampling = SamplingSettings(
                **{key: arguments.get(key, DEFAULTS[key]) for key in ("temperature", "top_k", "top_p", "seed")}
            )
        tokens = arguments.get("max_new_tokens", DEFAULTS["max_new_tokens"])
        expected = expected_ids(tiny_lm, tokens, sampling, arguments["prompt"])
        assert streamed_ids(call(rest_url, name, body, by_name=by_name)) == expected
