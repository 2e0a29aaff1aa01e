"""The two workloads: fixed-length single turns, and calls (many turns of one session).

Single turns mirror `vllm bench serve --dataset-name random`: every request has its own prompt
of a fixed token length (distinct from the first token, so the prefix cache cannot serve one
request from another) and asks for a fixed number of output tokens with `ignore_eos`.

A call is what the gateway really sends: the bot's opening line, then per caller turn the whole
dialog so far under one `session_id`, with the bot's previous answers (cut short where the caller
barged in) echoed back. The opening line is the same for every call, as in a campaign, so later
turns and other calls can reuse cached prefixes; TTFT by turn index shows whether they do.

Every random choice (prompt words, barge-in points, think times, arrivals) comes from a
generator seeded by the workload seed and the unit's number, so two servers measured one after
the other receive byte-identical requests.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from benchmarks.lib.client import TurnResult, stream_turn

OPENING = "Hello, valued Alibaba Cloud customer. This is a test of the opening message."

# Common English words: about one token each for Qwen-family tokenizers.
_WORDS = (  # noqa: SIM905 - a word list reads better as text
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which "
    "she do how their if will up other about out many then them these so some her would make "
    "like him into time has look two more write go see number no way could people my than "
    "first water been call who oil its now find long down day did get come made may part over "
    "new sound take only little work know place year live me back give most very after thing "
    "our just name good sentence man think say great where help through much before line right "
    "too mean old any same tell boy follow came want show also around form three small set put "
    "end does another well large must big even such because turn here why ask went men read "
    "need land different home us move try kind hand picture again change off play spell air "
    "away animal house point page letter mother answer found study still learn should world"
).split()


class PromptMaker:
    """Deterministic filler text of a given token length.

    With a tokenizer the text is cut to exactly `n` tokens (re-encoding decoded text can shift a
    token or two, as in vLLM's random dataset); without one, `n` words stand in for `n` tokens.
    """

    def __init__(self, tokenizer: str | None = None) -> None:
        self._tok: Any = None
        if tokenizer:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(tokenizer)

    def make(self, n_tokens: int, rng: random.Random) -> str:
        if n_tokens <= 0:
            return ""
        words = [rng.choice(_WORDS) for _ in range(n_tokens)]
        text = " ".join(words).capitalize()
        if self._tok is None:
            return text
        ids = self._tok.encode(text, add_special_tokens=False)
        while len(ids) < n_tokens:  # only when a word is shorter than a token (rare)
            text += " " + rng.choice(_WORDS)
            ids = self._tok.encode(text, add_special_tokens=False)
        return str(self._tok.decode(ids[:n_tokens]))


@dataclass(frozen=True)
class Workload:
    """What to send. Defaults follow the seed's request (sampling values, model name)."""

    kind: Literal["single", "calls"] = "single"
    model: str = "qwen-plus"
    prompt_tokens: int = 200
    output_tokens: int = 64
    user_tokens: int = 24
    turns: int = 4
    think_time_s: float = 1.0
    barge_in: float = 0.0
    opening: str = OPENING
    ignore_eos: bool = True
    min_tokens: int | None = None
    include_usage: bool = True
    sampling: dict[str, Any] = field(
        default_factory=lambda: {"temperature": 0.1, "top_p": 0.1, "top_k": 1}
    )
    extra_body: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def body(self, messages: list[dict[str, str]], session_id: str | None) -> dict[str, Any]:
        """One request body: the seed's fields plus the length controls a benchmark needs.

        `ignore_eos`/`min_tokens` are vLLM extensions that callgate honours too; without them a
        real model ends turns early and runs with different checkpoints stop being comparable.
        """
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
        body.update(self.sampling)
        body["max_tokens"] = self.output_tokens
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.min_tokens is not None:
            body["min_tokens"] = self.min_tokens
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        if session_id is not None:
            body["session_id"] = session_id
        body.update(self.extra_body)
        return body


@dataclass(frozen=True)
class Level:
    """One load level: closed loop at `concurrency`, or Poisson arrivals at `rate` units/s.

    Units are numbered from `first_unit`; a unit's number seeds its prompts, so a level split
    into slices (benchmarks.sidebyside) sends the same requests as the whole level would.
    With `duration_s` (closed loop only), no unit starts after that many seconds: `units` is
    then a ceiling, and the level lasts about `duration_s` whatever the server's speed.
    """

    units: int
    concurrency: int | None = None
    rate: float | None = None
    first_unit: int = 0
    duration_s: float | None = None

    @property
    def label(self) -> str:
        if self.rate is not None:
            cap = f", cap {self.concurrency}" if self.concurrency else ""
            return f"rate {self.rate:g}/s{cap}"
        return f"concurrency {self.concurrency}"


OnTurn = Callable[[TurnResult], None]


class Runner:
    """Runs a workload's units (turns or calls) against one URL at one level."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        auth: str | None,
        workload: Workload,
        prompts: PromptMaker,
        on_turn: OnTurn | None = None,
    ) -> None:
        self.client = client
        self.url = url
        self.auth = auth
        self.w = workload
        self.prompts = prompts
        self.on_turn = on_turn
        self.results: list[TurnResult] = []
        self._t0 = 0.0

    def _rng(self, *key: object) -> random.Random:
        return random.Random("-".join(str(k) for k in (self.w.seed, *key)))

    def _record(self, result: TurnResult) -> None:
        self.results.append(result)
        if self.on_turn is not None:
            self.on_turn(result)

    async def single(self, unit: int) -> None:
        rng = self._rng("single", unit)
        messages = [{"role": "user", "content": self.prompts.make(self.w.prompt_tokens, rng)}]
        result = await stream_turn(
            self.client, self.url, self.w.body(messages, None), self.auth, level_t0=self._t0
        )
        result.call_id = unit
        self._record(result)

    async def call(self, unit: int) -> None:
        """K turns of one session; the history grows with what the caller actually heard."""
        session_id = f"{1_000_000_000 + self.w.seed:012d}^{unit:08d}"
        messages = [{"role": "assistant", "content": self.w.opening}]
        for turn in range(1, self.w.turns + 1):
            rng = self._rng("call", unit, turn)
            messages.append({"role": "user", "content": self.prompts.make(self.w.user_tokens, rng)})
            cut_after = None
            if rng.random() < self.w.barge_in:
                cut_after = rng.randint(1, max(1, self.w.output_tokens // 2))
            think = self.w.think_time_s * rng.uniform(0.5, 1.5)
            result = await stream_turn(
                self.client,
                self.url,
                self.w.body(list(messages), session_id),
                self.auth,
                cut_after_chunks=cut_after,
                level_t0=self._t0,
            )
            result.call_id = unit
            result.turn_index = turn
            self._record(result)
            if not result.ok:
                return  # a caller who heard nothing hangs up
            messages.append({"role": "assistant", "content": result.text})
            if turn < self.w.turns and think > 0:
                await asyncio.sleep(think)

    async def run(self, level: Level) -> float:
        """Run all units of `level`; returns the wall time from first send to last answer."""
        unit_fn = self.call if self.w.kind == "calls" else self.single
        self._t0 = time.perf_counter()
        if level.rate is None:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for unit in range(level.first_unit, level.first_unit + level.units):
                queue.put_nowait(unit)

            stop_at = None if level.duration_s is None else self._t0 + level.duration_s

            async def worker() -> None:
                while not queue.empty():
                    if stop_at is not None and time.perf_counter() >= stop_at:
                        return
                    await unit_fn(queue.get_nowait())

            workers = max(1, min(level.concurrency or 1, level.units))
            await asyncio.gather(*(worker() for _ in range(workers)))
        else:
            cap = asyncio.Semaphore(level.concurrency) if level.concurrency else None
            arrivals = self._rng("arrivals", level.rate, level.first_unit)

            async def capped(unit: int) -> None:
                if cap is None:
                    await unit_fn(unit)
                    return
                async with cap:
                    await unit_fn(unit)

            tasks = []
            last = level.first_unit + level.units - 1
            for unit in range(level.first_unit, last + 1):
                tasks.append(asyncio.create_task(capped(unit)))
                if unit < last:
                    await asyncio.sleep(arrivals.expovariate(level.rate))
            await asyncio.gather(*tasks)
        return time.perf_counter() - self._t0
