"""`mvlm serve --ray` as a school's cluster meets it, on one node: a local Ray instance (2 CPUs), `mvlm serve nano
--ray ADDRESS --replicas 2` in its own process (two replicas of the bundled model behind Ray's HTTP proxy on
127.0.0.1), asked with the official `openai` client. Answers equal the local engine's greedy ones, requests spread
over both replicas, and a replica killed while requests are in flight is replaced with no request lost."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import subprocess
import sys
import threading
import time

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'mvlm-magic[ray]')")
serve = pytest.importorskip("ray.serve", reason="ray's serve part is not installed (pip install 'ray[serve]')")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from test_serve import free_port  # noqa: E402  (after the skips: without ray there is nothing to import for)

QUESTION, FOLLOW_UP = "How many shapes are there?", "Describe the picture in every detail."
TOKENS = 40
HEADER = "x-mvlm-replica"


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def pictures():
    from mvlm_magic.demo import shapes

    return [shapes.render(shapes.make_scene(seed)) for seed in shapes.HELDOUT_SEEDS[30:39]]  # 8, and one more


@pytest.fixture(scope="module")
def expected(pictures, cache_dir):
    """The local engine's greedy answers, two turns a picture (this also makes the export the server then finds
    in the cache)."""
    from mvlm_magic.demo import bundled_model
    from mvlm_magic.loader import load_engine

    local = load_engine(bundled_model(), "int4", cache_dir=cache_dir)
    answers = []
    for picture in pictures:
        chat = local.new_chat(picture, prepare=False)
        answers.append([chat.ask(q, max_new_tokens=TOKENS).result().text for q in (QUESTION, FOLLOW_UP)])
    return answers


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance, one node with 2 CPUs (one a replica); its address, for the server and for ray.kill."""
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def proxy(cluster, expected, cache_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("ray") / "server.log"
    port = free_port()
    command = [sys.executable, "-m", "mvlm_magic.cli", "serve", "nano", "--ray", cluster, "--replicas", "2",
               "--replica-cpus", "1", "--sticky-sessions", "--port", str(port), "--cache-dir", str(cache_dir)]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while "mvlm: serving nano on Ray" not in log.read_text():  # printed once the replicas are up
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
        process.kill()
    assert process.returncode == 130, log.read_text()  # SIGTERM ends it as Ctrl-C does: the app leaves the cluster
    assert "Traceback" not in log.read_text(), log.read_text()


def client_for(url, statuses=None, retries=0):
    def record(response):
        statuses.append((response.status_code, response.read()[:200] if response.status_code >= 500 else b""))

    hooks = {"response": [record]} if statuses is not None else {}
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=retries,
                         http_client=httpx.Client(timeout=120, event_hooks=hooks))


def ask(client, picture, stream=False, first_answer=None, session=None) -> tuple[str, str]:
    """(the answer, the replica that gave it): QUESTION about the picture, or with `first_answer`, the FOLLOW_UP."""
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(picture)}},
                                             {"type": "text", "text": QUESTION}]}]
    if first_answer is not None:
        messages += [{"role": "assistant", "content": first_answer}, {"role": "user", "content": FOLLOW_UP}]
    raw = client.chat.completions.with_raw_response.create(
        model="nano", messages=messages, max_tokens=TOKENS, stream=stream,
        extra_headers={"x-session-id": session} if session else None)
    reply = raw.parse()
    text = "".join(c.choices[0].delta.content or "" for c in reply) if stream else reply.choices[0].message.content
    return text, raw.headers[HEADER]


def test_two_replicas_answer_as_the_local_engine_and_keep_each_conversation(proxy, pictures, expected):
    """16 two-turn conversations at once (two about each picture), each with a session id of its own: both
    replicas answer, every answer is the local engine's, and each follow-up goes to its conversation's replica."""
    client = client_for(proxy)
    results = [None] * 16
    start = threading.Barrier(16)

    def converse(k):
        picture, session = pictures[k % 8], f"student-{k}"
        start.wait()
        first, one = ask(client, picture, stream=k % 2 == 0, session=session)
        second, two = ask(client, picture, first_answer=first, session=session)
        results[k] = ([first, second], one, two)

    threads = [threading.Thread(target=converse, args=(k,)) for k in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [answers for answers, _, _ in results] == [expected[k % 8] for k in range(16)]
    assert all(one == two for _, one, two in results), results  # a follow-up finds its conversation's replica
    assert len({one for _, one, _ in results}) == 2, results  # both replicas answered
    assert [m.id for m in client.models.list()] == ["nano"]
    health = httpx.get(f"{proxy}/health")
    assert health.json() == {"status": "ok", "model": "nano"} and health.headers[HEADER].startswith("SERVE_REPLICA")
    # a replica's own counters (the session's replica): its follow-ups fed only their new turn
    metrics = httpx.get(f"{proxy}/metrics", headers={"x-session-id": "student-0"})
    assert metrics.headers[HEADER] == results[0][1]
    fed, prompt = (metric(metrics.text, name) for name in ("mvlm_prefill_tokens_total", "mvlm_prompt_tokens_total"))
    assert fed < prompt * 0.75
    refused = httpx.post(f"{proxy}/v1/chat/completions", json={"model": "gpt-4o", "messages": []})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"


def test_the_notebook_client_keeps_its_conversation_on_one_replica(proxy, pictures, expected):
    """RemoteEngine (`%mvlm_load --server`) sends a session id per conversation: its follow-up is answered by the
    replica that holds the conversation, feeding only the new turn."""
    from mvlm_magic.runtime.remote import RemoteEngine

    chat = RemoteEngine(proxy, "nano").new_chat(pictures[8])  # a picture no replica has seen
    assert chat.ask(QUESTION, max_new_tokens=TOKENS).result().text == expected[8][0]

    def replica_fed():  # the counters of the session's replica
        return metric(httpx.get(f"{proxy}/metrics", headers={"x-session-id": chat.session}).text,
                      "mvlm_prefill_tokens_total")

    before = replica_fed()
    follow_up = chat.ask(FOLLOW_UP, max_new_tokens=TOKENS).result()
    assert follow_up.text == expected[8][1]
    assert replica_fed() - before < follow_up.timings.prompt_tokens - 144  # the picture's 144 were not fed again


def metric(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def test_a_killed_replica_is_replaced_and_no_request_is_lost(proxy, pictures, expected):
    """Four clients ask again and again; one replica's actor is killed mid-way. Every request is answered right
    (the client retries what the proxy answers with a 5xx, as the API allows), and a new replica takes its place."""
    statuses: list[tuple[int, bytes]] = []
    client = client_for(proxy, statuses, retries=3)
    answered: list[tuple[int, str, str]] = []
    seen = set()  # the replicas before the kill
    for i in range(40):
        seen.add(ask(client, pictures[i % 8])[1])
        if len(seen) == 2:
            break
    assert len(seen) == 2, seen
    done, replaced = threading.Event(), threading.Event()
    failures = []

    def keep_asking(k):
        i = k
        while not done.is_set():
            try:
                text, replica = ask(client, pictures[i % 8])  # no session: any replica
            except openai.APIError as error:  # lost: after its retries, still no answer
                failures.append(repr(error))
                continue
            answered.append((i % 8, text, replica))  # (the picture, its answer, who answered)
            if replica not in seen:
                replaced.set()
            i += 4

    threads = [threading.Thread(target=keep_asking, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # requests on both replicas
    victim = answered[-1][2]
    before = len(answered)
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    replaced.wait(90)
    done.set()
    for thread in threads:
        thread.join(60)
    assert replaced.is_set(), f"no new replica answered in 90 s; answers by {sorted({a[2] for a in answered})}"
    assert not failures, failures
    assert [text for _, text, _ in answered] == [expected[i][0] for i, _, _ in answered]
    assert len(answered) > before + 4  # answered on through the kill, not only before it
    retried = [body for status, body in statuses if status >= 500]
    print(f"{len(answered)} answers, {len(retried)} retried after a 5xx: {set(retried)}")


def test_bad_ray_options_end_with_one_line(capsys):
    from mvlm_magic.cli import main

    cases = {("serve", "--ray", "nano"): "--ray takes a Ray address (auto, HOST:6379 or ray://HOST:10001), not "
                                         "'nano'; name the model before --ray (mvlm serve MODEL --ray).",
             ("serve", "--replicas", "2"): "--replicas is for serving on Ray; add --ray [ADDRESS].",
             ("serve", "--ray", "--replicas", "2", "--max-replicas", "3"): "give --replicas N (a fixed number) or "
             "--min-replicas/--max-replicas (autoscaling), not both.",
             ("serve", "--ray", "--min-replicas", "3", "--max-replicas", "2"): "--max-replicas (2) is below "
                                                                             "--min-replicas (3).",
             ("serve", "--ray", "--replica-cpus", "0"): "--replica-cpus must be at least 1, not 0."}
    for argv, message in cases.items():
        assert main(list(argv)) == 2
        assert capsys.readouterr().err.strip() == f"mvlm: {message}"
    cores = os.cpu_count()
    assert main(["serve", "--ray", "--replicas", str(cores), "--replica-cpus", "2"]) == 2  # before Ray starts
    assert capsys.readouterr().err.strip() == f"mvlm: {cores} replicas of 2 cores need {2 * cores} cores; this " \
                                              f"machine has {cores}: lower --replicas or --replica-cpus."


def test_ray_serve_options_follow_the_batch_and_the_cluster():
    from mvlm_magic.errors import MvlmError
    from mvlm_magic.serve.ray_app import Scaling, build

    fixed = Scaling(replicas=3, replica_cpus=4).options(max_batch=16, cluster_cpus=64)
    assert fixed["num_replicas"] == 3 and fixed["max_ongoing_requests"] == 16
    assert fixed["ray_actor_options"] == {"num_cpus": 4}
    scaled = Scaling(replica_cpus=4).options(max_batch=16, cluster_cpus=64)["autoscaling_config"]
    assert scaled == {"min_replicas": 1, "max_replicas": 16, "target_ongoing_requests": 8}  # 64 CPUs / 4
    assert Scaling(min_replicas=2, max_replicas=5).options(8, None)["autoscaling_config"]["max_replicas"] == 5
    assert "request_router_config" not in fixed  # Ray's own: the shorter of two replicas' queues
    assert Scaling(sticky_sessions=True).options(8, 4)["request_router_config"]["request_router_class"] \
        .endswith("ConsistentHashRouter")
    with pytest.raises(MvlmError, match="unknown args replica"):
        build({"replica": 2})
