"""How often a real model ends the call when it should, and not when it should not:
`python -m benchmarks.end_call [--out FILE]` (run it under the engine lock, as the tests are).

Starts callgate on the embedded SmolLM2-135M-Instruct (`server/engine/embedded.py`, converted
once into the user's cache) with tests/models/real.yaml, the real-model tier's settings, whose
alias `ender` has `end_call` on, and sends greedy dialogs (`temperature: 0`) of two kinds: the
caller says goodbye (or asks to end the call), and the caller asks something. No hang-up API is
configured, so each call the model ends is counted `not_configured` in `callgate_hangups`: one
dialog at a time, the count's step says whether that dialog ended the call. Reports the rate of
each kind, single-turn and two-turn dialogs, with what the model said, as markdown.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from benchmarks.lib.servers import callgate_side, launch
from server.engine.embedded import EMBEDDED_NAME, ensure_embedded
from server.text.end_call import INSTRUCTION, MARKER

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "tests" / "models" / "real.yaml"
AUTH = "end-call-bench-0123456789"
ALIAS = "ender"

GOODBYES = [
    "Goodbye!", "Thanks, bye!", "That's all, goodbye.", "Bye bye.", "OK thank you, goodbye!",
    "I have to go now, bye.", "Bye.", "Thank you, that's everything. Goodbye.",
    "Great, thanks. Bye!", "See you, bye!", "Please end the call.", "I'm done, goodbye.",
    "Okay, goodbye then.", "Thanks for your help, bye.", "Goodbye and thank you.",
    "That is all I needed. Bye.", "You can hang up now.", "Talk to you later, bye!",
    "No more questions, goodbye.", "Alright, bye bye!", "Have a nice day, goodbye.",
    "Thanks a lot. Goodbye!", "Bye for now.", "Cheers, bye.",
]  # fmt: skip
QUESTIONS = [
    "What is the capital of France?", "What time do you open?", "Can you help me book a room?",
    "How much does it cost?", "What is 3 + 5?", "Who are you?", "Where are you located?",
    "Do you have parking?", "What is the capital of Japan?", "Can I pay by card?",
    "Is breakfast included?", "How do I get to the airport?", "What is your name?",
    "Are you open on Sunday?", "Can I speak to a manager?", "What is the weather like today?",
    "How long does delivery take?", "Do you sell gift cards?", "What is 10 minus 4?",
    "Can you repeat that?", "I need help with my order.", "What are your opening hours?",
    "Is the pool open?", "How are you today?",
]  # fmt: skip
# Two-turn dialogs: an earlier exchange, then the caller's last words.
EARLIER = [
    ("What time do you open?", "We open at nine in the morning."),
    ("Do you have parking?", "Yes, we have free parking for guests."),
    ("Is breakfast included?", "Yes, breakfast is included with every room."),
    ("Can I pay by card?", "Yes, we accept all major cards."),
]
LAST_GOODBYES = ["Great, thank you. Goodbye!", "OK, that's all. Bye!"]
LAST_QUESTIONS = ["And where are you located?", "How much is a room per night?"]


def dialogs() -> list[tuple[str, str, list[dict[str, str]]]]:
    """(kind, turns, messages) of every dialog: kind `goodbye` or `question`."""
    out = [("goodbye", "1", [{"role": "user", "content": g}]) for g in GOODBYES]
    out += [("question", "1", [{"role": "user", "content": q}]) for q in QUESTIONS]
    for question, answer in EARLIER:
        earlier = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        for kind, lasts in (("goodbye", LAST_GOODBYES), ("question", LAST_QUESTIONS)):
            out += [(kind, "2", [*earlier, {"role": "user", "content": last}]) for last in lasts]
    return out


def ended(client: httpx.Client, base: str) -> float:
    """Calls the model has ended so far (`callgate_hangups`, not configured here)."""
    text = client.get(f"{base}/metrics").text
    prefix = f'callgate_hangups_total{{model="{ALIAS}",outcome="not_configured"}} '
    return next(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def ask(client: httpx.Client, url: str, messages: list[dict[str, str]], n: int) -> str:
    body: dict[str, Any] = {
        "model": ALIAS,
        "messages": messages,
        "stream": False,
        "temperature": 0,
        "session_id": f"bench-{n}",
    }
    response = client.post(url, json=body, headers={"Authorization": AUTH}, timeout=120)
    response.raise_for_status()
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    args = parser.parse_args()
    model = ensure_embedded()
    side = callgate_side(
        model, CONFIG, auth=AUTH, env={"VLLM_CPU_KVCACHE_SPACE": "1"}, name="end-call"
    )
    rows = []
    logs = Path(tempfile.mkdtemp(prefix="end-call-"))
    with launch(side, logs) as running, httpx.Client() as c:
        before = ended(c, running.base_url)
        for n, (kind, turns, messages) in enumerate(dialogs()):
            said = ask(c, running.chat_url, messages, n)
            after = ended(c, running.base_url)
            rows.append((kind, turns, messages[-1]["content"], said, after > before))
            assert MARKER.lower() not in said.lower(), said  # never heard
            before = after
    report = render(rows)
    print(report)
    if args.out:
        args.out.write_text(report)


def render(rows: list[tuple[str, str, str, str, bool]]) -> str:
    lines = [
        "# The model ends the call: rates on the embedded model",
        "",
        f"`python -m benchmarks.end_call` (flock /tmp/callgate-engine.lock). Model: {EMBEDDED_NAME}"
        " (the embedded checkpoint, bfloat16, tests/models/real.yaml), greedy (temperature 0), "
        f"alias `{ALIAS}`: system prompt `You are a helpful assistant. Answer in one short "
        "sentence.` then the end-call instruction (server/text/end_call.py):",
        "",
        "```",
        INSTRUCTION,
        "```",
        "",
        "| dialogs | turns | ended the call |",
        "| --- | --- | --- |",
    ]
    for kind in ("goodbye", "question"):
        for turns in ("1", "2"):
            mine = [r for r in rows if r[0] == kind and r[1] == turns]
            hits = sum(r[4] for r in mine)
            lines.append(f"| caller {kind} | {turns} | {hits} of {len(mine)} |")
    lines += ["", "| kind | caller's last words | the model said (marker removed) | ended |"]
    lines += ["| --- | --- | --- | --- |"]
    for kind, turns, last, said, hit in rows:
        shown = said.replace("|", "/").replace("\n", " ")[:90]
        lines.append(f"| {kind} ({turns}) | {last} | {shown} | {'yes' if hit else 'no'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
