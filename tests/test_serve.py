"""`mvlm serve` as a class meets it: a real server process on 127.0.0.1 (the tiny V2 fp32 export at f32), asked
through the official `openai` client and plain HTTP. One server for the module."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from conftest import shapes_picture

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

KEY = "test-key"
NAME = "tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_url(image, kind="PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return f"data:image/{kind.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    shapes_picture(seed=3).save(folder / "three.png")
    return folder


@contextlib.contextmanager
def running_server(arguments: list[str], log):
    """`mvlm serve ARGUMENTS --port P` in its own process until the block ends; yields its URL once healthy."""
    port = free_port()
    command = [sys.executable, "-m", "mvlm_magic.cli", "serve", *arguments, "--port", str(port)]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                    assert json.load(response)["status"] == "ok"
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the server did not start:\n{log.read_text()}") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
    assert process.returncode in (0, -15), log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="module")
def server(exported, cache_dir, pictures, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with running_server([str(exported("v2", "fp32")), "--precision", "f32", "--api-key", KEY, "--pictures-folder",
                         str(pictures), "--name", NAME, "--max-tokens", "512", "--cache-dir", str(cache_dir)],
                        log) as url:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            assert json.load(response) == {"status": "ok", "model": NAME}
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


def question(text, image=None):
    parts = [{"type": "text", "text": text}]
    if image is not None:
        parts.insert(0, {"type": "image_url", "image_url": {"url": data_url(image)}})
    return {"role": "user", "content": parts}


def test_answers_equal_the_local_engine_streaming_or_not(client, engine):
    image = shapes_picture(seed=1)
    local = engine("v2", "fp32", "f32").ask(image, "What is in the picture?", max_new_tokens=12)
    reply = client.chat.completions.create(model=NAME, messages=[question("What is in the picture?", image)],
                                           max_tokens=12)
    assert reply.object == "chat.completion" and reply.model == NAME
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == local.text
    assert reply.choices[0].finish_reason == ("length" if local.finish_reason == "max_new_tokens" else "stop")
    assert reply.usage.completion_tokens == local.timings.new_tokens
    assert reply.usage.prompt_tokens == local.timings.prompt_tokens > 144  # the picture's image tokens counted
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    chunks = list(client.chat.completions.create(model=NAME, messages=[question("What is in the picture?", image)],
                                                 max_tokens=12, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == local.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reply.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == local.timings.new_tokens


def test_a_two_turn_conversation_continues_as_the_local_chat(client, server, engine):
    image = shapes_picture(seed=2)
    chat = engine("v2", "fp32", "f32").new_chat(image, prepare=False)
    first = chat.ask("Describe it.", max_new_tokens=8).result()
    second = chat.ask("And the colours?", max_new_tokens=8).result()
    messages = [question("Describe it.", image)]
    reply = client.chat.completions.create(model=NAME, messages=messages, max_tokens=8)
    assert reply.choices[0].message.content == first.text
    messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": " And the colours?\n"}]
    fed = metric(server, "mvlm_prefill_tokens_total")
    reply = client.chat.completions.create(model=NAME, messages=messages, max_tokens=8)
    assert reply.choices[0].message.content == second.text
    # the follow-up fed only its new turn (and the first answer's last token): the rest was in the KV cache
    assert metric(server, "mvlm_prefill_tokens_total") - fed < reply.usage.prompt_tokens - 144


def test_a_picture_from_the_pictures_folder_and_sampling_options(client, engine):
    local = engine("v2", "fp32", "f32").ask(shapes_picture(seed=3), "Why?", max_new_tokens=6)
    messages = [{"role": "system", "content": "ignored"},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "three.png"}},
                                             {"type": "text", "text": "Why?"}]}]
    reply = client.chat.completions.create(model=NAME, messages=messages, max_tokens=6)
    assert reply.choices[0].message.content == local.text
    seeded = [client.chat.completions.create(model=NAME, messages=messages, max_tokens=6, temperature=1.5, top_p=0.9,
                                             seed=5).choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_four_concurrent_requests_are_all_answered_right(client, engine):
    local = engine("v2", "fp32", "f32")
    images = [shapes_picture(seed=10 + i) for i in range(4)]
    expected = [local.ask(image, "What is it?", max_new_tokens=10).text for image in images]
    answers = [None] * 4

    def ask(i):
        stream = client.chat.completions.create(model=NAME, messages=[question("What is it?", images[i])],
                                                max_tokens=10, stream=i % 2 == 0)
        answers[i] = ("".join(c.choices[0].delta.content or "" for c in stream) if i % 2 == 0
                      else stream.choices[0].message.content)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers == expected


def metric(server, name) -> float:
    text = httpx.get(f"{server}/metrics").text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")
                      or line.startswith(name + "{") and line.split()[0] == name))


def test_a_closed_stream_stops_its_answer_and_the_next_request_is_served(client, server):
    story = [question("Tell me a long story.", shapes_picture())]
    # left alone, this answer runs past 64 tokens: stopping short of that below is the closed stream's doing
    assert client.chat.completions.create(model=NAME, messages=story, max_tokens=64).choices[0].finish_reason \
        == "length"
    cancelled = metric(server, 'mvlm_requests_total{outcome="cancelled"}')
    tokens = metric(server, "mvlm_completion_tokens_total")
    stream = client.chat.completions.create(model=NAME, messages=story, max_tokens=512, stream=True)
    next(iter(stream))
    stream.close()
    started = time.perf_counter()
    reply = client.chat.completions.create(model=NAME, messages=[question("Short?", shapes_picture())], max_tokens=2)
    assert reply.usage.completion_tokens == 2 and time.perf_counter() - started < 10
    deadline = time.monotonic() + 5
    while metric(server, 'mvlm_requests_total{outcome="cancelled"}') == cancelled and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(server, 'mvlm_requests_total{outcome="cancelled"}') == cancelled + 1
    # the closed stream's answer stopped within a few tokens of its first, far from its 512
    assert 2 + 1 <= metric(server, "mvlm_completion_tokens_total") - tokens < 2 + 64


def post(server, body, key=KEY, raw=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(f"{server}/v1/chat/completions", content=content, headers=headers, timeout=30)


def ok_body(**changes):
    body = {"model": NAME, "messages": [question("What?", shapes_picture())], "max_tokens": 2}
    return {**body, **changes}


BAD = {
    "no picture": (ok_body(messages=[{"role": "user", "content": "What?"}]), 400, "picture_missing"),
    "bad base64": (ok_body(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@not base64@@@"}},
        {"type": "text", "text": "What?"}]}]), 400, "invalid_image"),
    "not a picture": (ok_body(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"hello").decode()}},
        {"type": "text", "text": "What?"}]}]), 400, "invalid_image"),
    "a file outside the folder": (ok_body(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, {"type": "text", "text": "What?"}]}]),
        400, "invalid_image"),
    "an http URL": (ok_body(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://example.com/cat.png"}},
        {"type": "text", "text": "What?"}]}]), 400, "invalid_image"),
    "a second picture": (ok_body(messages=[question("What?", shapes_picture()), {"role": "assistant", "content": "x"},
                                           question("And this?", shapes_picture(seed=4))]), 400, "picture_misplaced"),
    "a path with a NUL": (ok_body(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "three\x00.png"}}, {"type": "text", "text": "What?"}]}]),
        400, "invalid_image"),
    "a broken URL": (ok_body(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://[::1"}}, {"type": "text", "text": "What?"}]}]),
        400, "invalid_image"),
    "an audio part": (ok_body(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
                      400, None),
    "unknown model": (ok_body(model="gpt-4o"), 404, "model_not_found"),
    "too many tokens": (ok_body(max_tokens=100000), 400, None),
    "a long question": (ok_body(messages=[question("why " * 2000, shapes_picture())]), 400, "question_too_long"),
    "bad temperature": (ok_body(temperature=-1), 400, None),
    "ends with the assistant": (ok_body(messages=[question("What?", shapes_picture()),
                                                  {"role": "assistant", "content": "x"}]), 400, None),
    "no messages": (ok_body(messages=[]), 400, None),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_requests_get_an_api_error(server, case):
    body, status, code = BAD[case]
    response = post(server, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error" and error["code"] == code


def test_body_size_key_and_json_are_checked_and_the_server_lives_on(server, client):
    huge = post(server, None, raw=b"{" + b" " * (21 << 20) + b"}")
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    for key in (None, "wrong"):
        denied = post(server, ok_body(), key=key)
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
    assert post(server, None, raw=b"{not json").status_code == 400
    assert httpx.get(f"{server}/v1/nothing").json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    assert client.chat.completions.create(**ok_body()).usage.completion_tokens == 2  # still answering


def test_models_health_and_metrics(server, client):
    assert [m.id for m in client.models.list()] == [NAME]
    assert httpx.get(f"{server}/health").json() == {"status": "ok", "model": NAME}
    client.chat.completions.create(**ok_body())
    text = httpx.get(f"{server}/metrics").text
    for name in ("mvlm_requests_total", "mvlm_prompt_tokens_total", "mvlm_completion_tokens_total",
                 "mvlm_queue_length", "mvlm_first_token_seconds"):
        assert f"# TYPE {name} " in text
    assert metric(server, 'mvlm_requests_total{outcome="ok"}') >= 1
    assert metric(server, "mvlm_first_token_seconds_count") >= 1
    assert metric(server, "mvlm_queue_length") == 0


def test_bad_start_options_end_with_one_line_before_loading(capsys, tmp_path):
    from mvlm_magic.cli import main

    assert main(["serve", "--pictures-folder", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"mvlm: the pictures folder {tmp_path / 'missing'} is not a folder; " \
                                              "name an existing folder."
    assert main(["serve", "--api-key", " "]) == 2
    assert "the API key is empty" in capsys.readouterr().err


def test_eight_conversations_at_once_decode_together_and_answer_as_the_local_engine(cache_dir, tmp_path):
    """The bundled model with our operations: each request on a cache row of its own, their tokens decoded in
    shared calls; two turns each (the client sends the history again), greedy answers as the local engine's."""
    from mvlm_magic.demo import bundled_model, shapes
    from mvlm_magic.loader import load_engine

    local = load_engine(bundled_model(), "int4", cache_dir=cache_dir)
    if local.rows is None:
        pytest.skip(f"our operations do not run here ({local.ops_why})")
    pictures = [shapes.render(shapes.make_scene(seed)) for seed in shapes.HELDOUT_SEEDS[20:28]]
    first, second = "How many shapes are there?", "Describe the picture in every detail."
    expected = []
    for picture in pictures:
        chat = local.new_chat(picture, prepare=False)
        expected.append([chat.ask(first, max_new_tokens=40).result().text,
                         chat.ask(second, max_new_tokens=40).result().text])
    with running_server(["nano", "--cache-dir", str(cache_dir)], tmp_path / "server.log") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        answers = [None] * len(pictures)
        start = threading.Barrier(len(pictures))

        def converse(i):
            messages = [question(first, pictures[i])]
            start.wait()
            one = client.chat.completions.create(model="nano", messages=messages, max_tokens=40)
            messages += [{"role": "assistant", "content": one.choices[0].message.content}, question(second)]
            stream = client.chat.completions.create(model="nano", messages=messages, max_tokens=40, stream=True)
            answers[i] = [one.choices[0].message.content, "".join(c.choices[0].delta.content or "" for c in stream)]

        threads = [threading.Thread(target=converse, args=(i,)) for i in range(len(pictures))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert answers == expected
        steps, rows = metric(url, "mvlm_decode_steps_total"), metric(url, "mvlm_decode_step_rows_total")
        assert rows / steps > 2, (steps, rows)  # answers decoded together, not one after the other
        prompt, fed = metric(url, "mvlm_prompt_tokens_total"), metric(url, "mvlm_prefill_tokens_total")
        assert fed < prompt * 0.75  # the second turns continued their rows: only the new turn was fed


def test_the_client_engine_answers_and_continues_as_the_local_chat(server, engine):
    from mvlm_magic.runtime.remote import RemoteEngine

    image = shapes_picture(seed=4)
    local = engine("v2", "fp32", "f32").new_chat(image, prepare=False)
    expected = [local.ask(q, max_new_tokens=8).result() for q in ("Describe it.", "And the colours?")]
    remote = RemoteEngine(server, api_key=KEY)  # no model named: the one it serves
    assert remote.name == f"{NAME} at {server}/v1"
    chat = remote.new_chat(image)
    first = chat.ask("Describe it.", max_new_tokens=8)
    streamed = "".join(first)
    answer = first.result()
    second = chat.ask("And the colours?", max_new_tokens=8).result()
    assert [streamed, second.text] == [e.text for e in expected] and answer.text == streamed
    assert [a.finish_reason for a in (answer, second)] == [e.finish_reason for e in expected]
    assert answer.timings.new_tokens == expected[0].timings.new_tokens and answer.timings.first_token_ms > 0
    assert "picture already seen" in second.timings.summary()
    assert chat.history == [("Describe it.", streamed), ("And the colours?", second.text)]


def test_stop_closes_the_clients_stream_and_the_server_goes_on(server):
    from mvlm_magic.runtime.remote import RemoteEngine

    remote = RemoteEngine(server, NAME, api_key=KEY)
    stream = remote.new_chat(shapes_picture()).ask("Tell me a long story.", max_new_tokens=400)
    for _ in stream:
        stream.stop()
    answer = stream.result()
    assert answer.finish_reason == "stopped" and answer.timings.new_tokens < 64
    assert remote.ask(shapes_picture(seed=5), "What is it?", max_new_tokens=4).text  # the server answers on


def test_the_clients_mistakes_are_one_line(server):
    from mvlm_magic.errors import MvlmError
    from mvlm_magic.runtime.remote import RemoteEngine

    with pytest.raises(MvlmError, match="refused the API key"):
        RemoteEngine(server, api_key="wrong")
    with pytest.raises(MvlmError, match=f"does not serve 'other'; it serves {NAME}"):
        RemoteEngine(server, "other", api_key=KEY)
    with pytest.raises(MvlmError, match="no OpenAI-compatible server answered"):
        RemoteEngine(f"http://127.0.0.1:{free_port()}", timeout=5)
    remote = RemoteEngine(server, NAME, api_key=KEY)
    with pytest.raises(MvlmError, match="the server refused the question: .*max_tokens"):
        remote.new_chat(shapes_picture()).ask("What is it?", max_new_tokens=100000).result()


def test_the_magics_and_the_cli_use_a_server(server, engine, tmp_path):
    """In a real kernel, `%mvlm_load --server` then `%%mvlm_ask` and a follow-up; and `mvlm ask --server`."""
    from jupyter_client.manager import start_new_kernel

    image = shapes_picture(seed=6)
    image.save(tmp_path / "picture.png")
    local = engine("v2", "fp32", "f32").new_chat(image, prepare=False)
    expected = [local.ask(q, max_new_tokens=8).result().text for q in ("What is it?", "And the colours?")]
    manager, kernel = start_new_kernel(kernel_name="python3", cwd=str(tmp_path),
                                       env={**os.environ, "IPYTHONDIR": str(tmp_path / "ipython")})
    try:
        def execute(code):
            out = []
            reply = kernel.execute_interactive(code, timeout=120, output_hook=out.append)
            assert reply["content"]["status"] == "ok", reply["content"]
            return "".join(m["content"].get("text", "") for m in out if m["msg_type"] == "stream")

        said = execute(f"%load_ext mvlm_magic\n%config MvlmMagics.api_key = {KEY!r}\n"
                       f"%mvlm_load --server {server} --model {NAME}")
        assert f"ready: {NAME} at {server}/v1" in said
        answers = []
        for question_text in ("What is it?", "And the colours?"):
            execute(f"%%mvlm_ask picture.png --blocking --max-new-tokens 8\n{question_text}")
            answers.append(execute("print(repr(_mvlm_answer.text))").strip())
        assert answers == [repr(text) for text in expected]
    finally:
        kernel.stop_channels()
        manager.shutdown_kernel(now=True)
    run = subprocess.run([sys.executable, "-m", "mvlm_magic.cli", "ask", str(tmp_path / "picture.png"), "What is it?",
                          "--server", server, "--max-new-tokens", "8"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OPENAI_API_KEY": KEY})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == expected[0].strip()
