"""Overload: the queue has a bound; past it users are told to try again, and the server stays up."""

from __future__ import annotations

import time

import pytest
from conftest import SETTINGS, serving
from gradio_client import Client
from gradio_client.exceptions import AppError

from tokstep.web.page import ServerLimits, create_demo

PROMPT = "Once upon a time"


@pytest.fixture
def small_server(tiny_lm):
    """A server that runs one Auto-run at a time and lets two more wait."""
    demo = create_demo(tiny_lm, limits=ServerLimits(max_queue=2, autorun_workers=1, workers=1))
    with serving(demo) as url:
        yield url


def test_past_the_queue_bound_users_hear_busy_try_again(small_server):
    clients = [Client(small_server, verbose=False) for _ in range(6)]
    for client in clients:
        client.predict(PROMPT, *SETTINGS, api_name="/reset")
    jobs = []
    for client in clients:
        jobs.append(client.submit(PROMPT, 6, 10.0, *SETTINGS, api_name="/autorun"))
        time.sleep(0.15)  # arrive in order: the first runs, the next two wait
    outcomes = []
    for job in jobs:
        try:
            job.result(timeout=60)
            outcomes.append("served")
        except Exception as error:  # the client raises QueueError (not AppError) when turned away
            assert not isinstance(error, AppError)
            assert "Queue is full! Please try again." in str(error)
            outcomes.append("busy")
    assert outcomes.count("served") >= 3  # the one running and the two waiting
    assert "busy" in outcomes
    # Nothing hangs, and the server keeps serving once the rush is over.
    later = Client(small_server, verbose=False)
    assert len(list(later.submit(PROMPT, 2, api_name="/generate"))) == 2
