"""The batching scheduler on the tiny random ImageBind-LLM: shared forward passes, isolated rows."""

from __future__ import annotations

import threading

import pytest
from serve_utils import SlowGenerator, client, png_bytes, running_server

from ibllm_agent.serve.scheduler import (
    BatchScheduler,
    GenerationCancelled,
    QueueFullError,
    ServiceUnavailableError,
)
from ibllm_agent.types import Media, Sampling

GREEDY = Sampling(max_new_tokens=4, temperature=0)


@pytest.fixture(scope="module")
def tiny():
    from ibllm_agent.model import ImageBindLLM
    from ibllm_agent.multimodal import MultimodalLLM

    # The raw template: a prompt ends with the client's own words, so the random model's answers
    # differ from prompt to prompt (under the long Alpaca preamble they mostly coincide).
    return MultimodalLLM.from_llm(ImageBindLLM.from_preset("tiny", prompt_template="raw").eval())


def test_batched_rows_equal_single_runs(tiny):
    prompts = ["a cat sat", "two dogs ran far away", "what is the colour of the sky"]
    media = [[], [Media("image", png_bytes())], []]
    alone = [tiny.generate(p, m, sampling=GREEDY) for p, m in zip(prompts, media)]
    sched = BatchScheduler(tiny, max_batch_size=8, max_wait_s=2.0)
    try:
        tickets = [sched.submit(p, m, sampling=GREEDY) for p, m in zip(prompts, media)]
        results = [t.wait() for t in tickets]
    finally:
        sched.close()
    assert [r.text for r in results] == [a.text for a in alone]
    assert [r.completion_tokens for r in results] == [a.completion_tokens for a in alone]
    assert [r.prompt_tokens for r in results] == [a.prompt_tokens for a in alone]
    assert sched.stats.batches == 1 and sched.stats.max_batch == 3  # one shared forward pass per step


def test_different_sampling_settings_do_not_share_a_batch(tiny):
    sched = BatchScheduler(tiny, max_batch_size=8, max_wait_s=0.5)
    try:
        a = sched.submit("hello", sampling=GREEDY)
        b = sched.submit("hello", sampling=Sampling(max_new_tokens=2, temperature=0))
        ra, rb = a.wait(), b.wait()
    finally:
        sched.close()
    assert ra.completion_tokens == 4 and rb.completion_tokens == 2
    assert sched.stats.batch_sizes == {1: 2}


def test_bad_media_fails_only_its_own_request(tiny):
    from ibllm_agent.media import MediaError

    sched = BatchScheduler(tiny, max_batch_size=8, max_wait_s=1.0)
    try:
        good = sched.submit("a cat", [Media("image", png_bytes())], sampling=GREEDY)
        bad = sched.submit("a dog", [Media("image", b"this is not an image")], sampling=GREEDY)
        other = sched.submit("a bird", sampling=GREEDY)
        with pytest.raises(MediaError):
            bad.wait()
        assert good.wait().completion_tokens == 4 and other.wait().completion_tokens == 4
    finally:
        sched.close()


def test_cancel_stops_decoding(tiny):
    tiny.llm.engine.stats.reset()
    sched = BatchScheduler(tiny, max_batch_size=4, max_wait_s=0)
    try:
        ticket = sched.submit("tell me a long story", sampling=Sampling(max_new_tokens=300, temperature=0))
        next(ticket)  # the first delta: decoding has started
        ticket.cancel()
        with pytest.raises(GenerationCancelled):
            for _ in ticket:
                pass
        sched.submit("x", sampling=GREEDY).wait()  # the worker is free again
    finally:
        sched.close()
    assert sched.stats.cancelled == 1
    assert tiny.llm.engine.stats.decode_tokens < 100


def test_queue_bound_and_close_drains():
    gate = threading.Event()
    sched = BatchScheduler(SlowGenerator(pieces=2, delay=0, gate=gate), max_queue=2, max_wait_s=0)
    first = sched.submit("a")
    while sched.queued:  # wait until the worker holds the first request
        pass
    queued = [sched.submit("b"), sched.submit("c")]
    with pytest.raises(QueueFullError):
        sched.submit("d")
    gate.set()
    closer = threading.Thread(target=sched.close)
    closer.start()
    assert [t.wait().text for t in [first, *queued]] == ["w0 w1 "] * 3  # queued work still finishes
    closer.join(10)
    with pytest.raises(ServiceUnavailableError):
        sched.submit("e")


def test_sixteen_concurrent_clients_get_their_own_answers(tiny):
    """16 clients at once over HTTP: every answer is its own prompt's (the batched row of exactly that
    prompt), and the requests really shared batches."""
    import random

    from langchain_core.messages import HumanMessage

    from ibllm_agent import ChatImageBindLLM
    from ibllm_agent.serve import ServeConfig, create_app

    words = ["cat", "dog", "sky", "red", "blue", "tree", "water", "fire", "stone", "cloud", "moon", "sun", "bird", "fish", "horse", "river", "king", "queen"]
    rng = random.Random(0)
    questions = [" ".join(rng.choice(words) for _ in range(3 + i % 5)) for i in range(16)]
    chat = ChatImageBindLLM(model=tiny)
    calls = [chat._prepare([HumanMessage(q)], None, {"temperature": 0, "max_new_tokens": 6}) for q in questions]
    expected = [g.text.strip() for g in tiny.generate([c.prompt for c in calls], sampling=calls[0].sampling)]
    assert len(set(expected)) > 8  # the random model answers different prompts differently

    app = create_app(tiny, ServeConfig(model_id="tiny", memory_url="memory", max_wait_ms=200))
    answers: dict[int, str] = {}
    with running_server(app) as server:
        c = client(server)

        def ask(i: int) -> None:
            r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": questions[i]}],
                                          temperature=0, max_tokens=6)
            answers[i] = r.choices[0].message.content

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        stats = app.state.ibllm.scheduler.stats
    assert [answers[i] for i in range(16)] == expected
    assert stats.rows == 16 and stats.max_batch >= 4
