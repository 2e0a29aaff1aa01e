"""The real-weights tier: a first run without the model hub, and what a real instruct model does.

One server, started as `make run` starts one: no `--model`, `engine.model` a hub id that is not
cached, the hub unreachable (HF_ENDPOINT points at a closed port, HF_HOME is empty) and
`engine.offline_fallback` on. It must say in one line that it serves the embedded
SmolLM2-135M-Instruct and why, then answer the console's curl check. On that real checkpoint
(converted once into the user's cache, `server/engine/embedded.py`), greedy answers that a 135M
instruct model gets right, the engine's own end of sequence, stop strings, `stream: false`,
the checkpoint's generation_config defaults and the alias's system prompt with biz_params.

The tiny random checkpoint (the rest of the suite) never ends a turn by itself; this one does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.lib.servers import free_port, run_to_exit
from server.engine.embedded import EMBEDDED_NAME, ensure_embedded
from server.text.end_call import MARKER
from tests.conftest import REPO_ROOT, ServerHandle, launch_server, server_side
from tests.wire import metric, parse_chat_stream, scrape
from tests.wire.aliyun import KEY_ENV, AliyunStandIn

REAL_CONFIG = Path(__file__).resolve().parent / "real.yaml"


@pytest.fixture(scope="module")
def embedded_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's callgate cache with the converted checkpoint (converted now if missing: the
    same conversion `make run` does, ~30 s once; later runs reuse it)."""
    return ensure_embedded().parent.parent


@pytest.fixture(scope="module")
def hangup_api() -> Iterator[AliyunStandIn]:
    """The stand-in for Alibaba's API that the server's hang-ups go to (alias `ender`)."""
    with AliyunStandIn() as api:
        yield api


@pytest.fixture(scope="module")
def first_run(
    embedded_cache: Path, tmp_path_factory: pytest.TempPathFactory, hangup_api: AliyunStandIn
) -> Iterator[ServerHandle]:
    env = {
        "CALLGATE_HANGUP__ENDPOINT": hangup_api.endpoint,
        **KEY_ENV,  # the test key, through the SDK's default credential chain
        "CALLGATE_CACHE_DIR": str(embedded_cache),
        "HF_HOME": str(tmp_path_factory.mktemp("empty-hf-home")),
        "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        # conftest sets these for the tiny checkpoint; a first run on a fresh machine has none.
        "HF_HUB_OFFLINE": "",
        "TRANSFORMERS_OFFLINE": "",
    }
    with launch_server(
        None, tmp_path_factory.mktemp("server-logs"), env=env, config=REAL_CONFIG
    ) as handle:
        yield handle


def ask(srv: ServerHandle, question: str, **fields: Any) -> tuple[str, str, dict[str, Any]]:
    """A `stream: false` turn: (content, finish_reason, usage)."""
    body: dict[str, Any] = {
        "model": "assistant",
        "messages": [{"role": "user", "content": question}],
        "stream": False,
        "temperature": 0,
    }
    body.update(fields)
    body = {k: v for k, v in body.items() if v is not None}  # None: leave the field out
    response = httpx.post(srv.url, json=body, headers={"Authorization": srv.auth}, timeout=120)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    return choice["message"]["content"], choice["finish_reason"], response.json()["usage"]


@pytest.mark.slow
def test_a_first_run_without_the_hub_says_which_model_and_why(first_run: ServerHandle) -> None:
    lines = [line for line in first_run.log_text().splitlines() if "serving the embedded" in line]
    assert len(lines) == 1, first_run.log_text()[-3000:]
    assert EMBEDDED_NAME in lines[0]
    assert "Qwen/Qwen2.5-0.5B-Instruct" in lines[0] and "unreachable" in lines[0]
    assert "Traceback" not in first_run.log_text()


@pytest.mark.slow
def test_the_consoles_curl_check_gets_a_real_answer(first_run: ServerHandle) -> None:
    """The README's request, as the console sends it."""
    body = {
        "model": "qwen-plus",  # not an alias here: served by the default alias
        "messages": [
            {"role": "assistant", "content": "This is a test opening message."},
            {"role": "user", "content": "Who are you?"},
        ],
        "stream": True,
    }
    response = httpx.post(
        first_run.url,
        json=body,
        headers={"Authorization": first_run.auth, "Content-Type": "application/json"},
        timeout=120,
    )
    assert response.status_code == 200
    stream = parse_chat_stream(response.content)
    assert stream.finish_reason in ("stop", "length")
    assert len(stream.content.split()) >= 3, stream.content


@pytest.mark.slow
@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("What is the capital of France?", "Paris"),
        ("What is the capital of Japan?", "Tokyo"),
        ("What is 3 + 5? Answer with the number only.", "8"),
        ("Is the Earth flat? Answer yes or no.", "No"),
    ],
)
def test_greedy_answers_a_small_instruct_model_gets_right(
    first_run: ServerHandle, question: str, expected: str
) -> None:
    content, reason, usage = ask(first_run, question)
    assert expected in content, content
    # The engine's own end of sequence (<|im_end|>), well before the 48-token cap.
    assert reason == "stop" and usage["completion_tokens"] < 48, (content, usage)


@pytest.mark.slow
def test_a_stop_string_ends_the_reply_before_it(first_run: ServerHandle) -> None:
    full, _, _ = ask(first_run, "What is the capital of France?")
    cut, reason, usage = ask(first_run, "What is the capital of France?", stop=[" is"])
    assert full.startswith(cut + " is"), (full, cut)
    assert cut and " is" not in cut and reason == "stop"
    assert usage["completion_tokens"] < len(full.split()) + 4


@pytest.mark.slow
def test_the_stream_says_what_stream_false_says(first_run: ServerHandle) -> None:
    question = "What is the capital of Japan?"
    content, reason, _ = ask(first_run, question)
    body = {"model": "assistant", "messages": [{"role": "user", "content": question}]}
    body |= {"stream": True, "temperature": 0}
    response = httpx.post(
        first_run.url, json=body, headers={"Authorization": first_run.auth}, timeout=120
    )
    stream = parse_chat_stream(response.content)
    assert stream.content == content and stream.finish_reason == reason == "stop"
    assert len(stream.choice_chunks) > 2  # streamed in pieces, not one blob


@pytest.mark.slow
def test_the_cap_ends_a_long_reply_with_length(first_run: ServerHandle) -> None:
    content, reason, usage = ask(first_run, "Write a long story about a dragon.")
    assert reason == "length" and usage["completion_tokens"] == 48, (content, usage)


@pytest.mark.slow
def test_the_checkpoints_generation_config_fills_what_the_request_leaves_out(
    first_run: ServerHandle,
) -> None:
    """The converted checkpoint's generation_config says temperature 0.2, top_p 0.9 (the model
    card's). A seeded request without them samples exactly as one that sets them, and not as
    vLLM's own defaults (1.0, 1.0) would."""
    question = "Tell me a long story about a dragon."
    common = {"seed": 7, "max_tokens": 40}
    without = {"temperature": None, **common}
    defaults, _, _ = ask(first_run, question, **without)
    same, _, _ = ask(first_run, question, temperature=0.2, top_p=0.9, **common)
    plain, _, _ = ask(first_run, question, temperature=1.0, top_p=1.0, **common)
    assert defaults == same
    assert defaults != plain


@pytest.mark.slow
@pytest.mark.parametrize("hotel", ["Grand Lotus Hotel", "Silver Pine Lodge"])
def test_biz_params_change_what_the_agent_says(first_run: ServerHandle, hotel: str) -> None:
    content, _, _ = ask(
        first_run,
        "What is the name of the hotel where you work?",
        model="receptionist",
        biz_params={"hotel": hotel},
    )
    assert hotel.split()[1] in content, content  # "Lotus", "Pine"


# Greedy dialogs whose outcome the embedded model and the end-call instruction give (the rates
# over 64 dialogs: benchmarks/results/end_call.md). Questions first: a question's hang-up, if
# there were one, would be requested before any goodbye's.
ASKS = ["What is the capital of France?", "What is the capital of Japan?", "Do you have parking?"]
GOODBYES = ["Goodbye!", "That's all, goodbye.", "I have to go now, bye."]


@pytest.mark.slow
def test_told_how_the_model_ends_the_call_on_goodbye_and_not_on_a_question(
    first_run: ServerHandle, hangup_api: AliyunStandIn
) -> None:
    """Alias `ender` (end_call on): the marker is never in what the caller hears, and exactly the
    goodbye dialogs' calls get one HangupOperate each, with their CallId, after the playback."""
    said = {}
    for n, words in enumerate(ASKS + GOODBYES):
        content, reason, _ = ask(first_run, words, model="ender", session_id=f"real-{n}")
        assert reason in ("stop", "length") and content, content
        assert "end_call" not in content.lower(), content
        said[words] = content
    goodbyes = {f"real-{n}" for n in range(len(ASKS), len(ASKS) + len(GOODBYES))}
    calls = hangup_api.wait_for(len(goodbyes), timeout_s=30)
    assert sorted(c.query["CallId"] for c in calls) == sorted(goodbyes), said
    assert all(c.query["ImmediateHangup"] == "False" and c.signed for c in calls)
    assert len(hangup_api.calls) == len(goodbyes), said  # no question's call, none twice
    for _ in range(100):  # counted once the API has answered: a moment after the request
        sent = metric(scrape(first_run), "callgate_hangups_total", model="ender", outcome="sent")
        if sent == len(GOODBYES):
            break
        time.sleep(0.1)
    assert sent == len(GOODBYES)
    assert MARKER not in first_run.log_text()  # nor in the log (content is not logged anyway)


def test_a_model_that_cannot_be_loaded_ends_in_one_line(tmp_path: Path) -> None:
    """`MODEL=no/such-model make run`: one line naming the model and the cause, exit 4, in
    seconds (nothing heavy is imported before the check)."""
    env = {
        "HOME": str(tmp_path),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        # The harness turns the hub off for the tiny checkpoint; a fresh machine has it on.
        "HF_HUB_OFFLINE": "",
        "TRANSFORMERS_OFFLINE": "",
    }
    for model, cause in [
        ("no/such-model", "unreachable"),
        ("/no/such/dir", "no such directory"),
        (str(REPO_ROOT / "configs"), "no config.json"),
    ]:
        side = server_side(model, env=env, config=REPO_ROOT / "configs" / "cpu.yaml")
        done = run_to_exit(side, timeout_s=60)
        assert done.returncode == 4, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"callgate: cannot load model {model}: ")
        assert cause in lines[0]


@pytest.mark.slow
def test_a_list_asked_for_is_spoken_without_markdown(first_run: ServerHandle) -> None:
    """The same model and prompt, with and without the alias's speech filter: written for a
    screen it is a markdown list; on the voice alias, plain sentences with the same words."""
    question = "Give me three tips for sleeping well, as a numbered list with bold titles."
    screen, _, _ = ask(first_run, question, model="screen", max_tokens=120)
    spoken, _, _ = ask(first_run, question, model="assistant", max_tokens=120)
    assert "**" in screen and "\n2. " in screen, screen  # what the model writes
    for mark in ("*", "#", "`", "\n", "1.", "2.", "- "):
        assert mark not in spoken, spoken
    assert spoken.count(". ") >= 2, spoken  # the list items became sentences
    words = [w for w in screen.replace("*", " ").split() if w.isalpha() and len(w) > 3]
    assert words and all(w in spoken for w in words), (screen, spoken)
    turns = [line for line in first_run.log_text().splitlines() if '"alias": "assistant"' in line]
    assert any('"speech_filtered": ' in line for line in turns)
