"""Ratios (ours / theirs) and the markdown report of a side-by-side result document.

The target from the issue: at every level our TTFT p50 is at most vLLM's server's and our
throughput at least equal, i.e. `ttft_p50` ratio <= 1 and `output_tokens_per_s` ratio >= 1.
A TTFT ratio below 1 is better for us; a throughput ratio above 1 is better for us.
"""

from __future__ import annotations

from typing import Any


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def _key(lv: dict[str, Any]) -> tuple[int | None, float | None]:
    return (lv["concurrency"], lv["rate"])


def ratios(ours: dict[str, Any] | None, theirs: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per level present in both runs: ours/theirs for TTFT p50/p99 and throughput."""
    if not ours or not theirs:
        return []
    theirs_by = {_key(lv): lv for lv in theirs["levels"]}
    rows = []
    for lv in ours["levels"]:
        other = theirs_by.get(_key(lv))
        if other is None:
            continue
        row = {
            "concurrency": lv["concurrency"],
            "rate": lv["rate"],
            "ttft_p50": _ratio(lv["ttft_ms"]["p50"], other["ttft_ms"]["p50"]),
            "ttft_p99": _ratio(lv["ttft_ms"]["p99"], other["ttft_ms"]["p99"]),
            "output_tokens_per_s": _ratio(lv["output_tokens_per_s"], other["output_tokens_per_s"]),
            "turns_per_s": _ratio(lv["turns_per_s"], other["turns_per_s"]),
            "frontend_cpu_per_token": _ratio(_cpu(lv), _cpu(other)),
        }
        p50, tput = row["ttft_p50"], row["output_tokens_per_s"]
        row["meets_target"] = p50 is not None and tput is not None and p50 <= 1.0 and tput >= 1.0
        rows.append(row)
    return rows


def _cpu(lv: dict[str, Any], part: str = "frontend") -> float | None:
    cpu = lv.get("server_cpu")
    return None if cpu is None else cpu[f"{part}_us_per_token"]


def _background(lv: dict[str, Any]) -> float | None:
    cpu = lv.get("server_cpu")
    return None if cpu is None else cpu.get("background_cores")


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _level(lv: dict[str, Any]) -> str:
    return str(lv["concurrency"]) if lv["rate"] is None else f"{lv['rate']:g}/s"


def _workload_line(doc: dict[str, Any]) -> str:
    w = doc["workload"]
    eos = ", ignore_eos" if w["ignore_eos"] else ""
    if w["kind"] == "single":
        return (
            f"single turns: {w['prompt_tokens']}-token prompt, {w['output_tokens']} output "
            f"tokens{eos}; sampling {w['sampling']}"
        )
    return (
        f"calls: {w['turns']} turns per call under one session_id, {w['user_tokens']}-token "
        f"caller turns after a shared opening line, {w['output_tokens']} output tokens per turn"
        f"{eos}, think time {w['think_time_s']} s mean, barge-in on {w['barge_in']:.0%} of turns"
    )


TITLE = "callgate vs vLLM's OpenAI server, side by side"  # sidebyside's report
LABELS = {"ours": "callgate", "theirs": "vLLM server"}  # sidebyside's two sides


def labels(result: dict[str, Any]) -> dict[str, str]:
    """The two sides' names in the report: the result's own, else callgate and vLLM's server."""
    return {**LABELS, **result.get("labels", {})}


def _comparison_table(kind: str, result: dict[str, Any]) -> list[str]:
    a, b = labels(result)["ours"], labels(result)["theirs"]
    ours = result["runs"].get("ours", {}).get(kind)
    theirs = result["runs"].get("theirs", {}).get(kind)
    if not ours or not theirs:
        return []
    by = {_key(lv): lv for lv in theirs["levels"]}
    rat = {(r["concurrency"], r["rate"]): r for r in result["ratios"].get(kind, [])}
    per_round: dict[tuple[Any, Any], list[str]] = {}
    for rows in result.get("ratios_by_part", {}).get(kind, []):
        for r in rows:
            per_round.setdefault((r["concurrency"], r["rate"]), []).append(_f(r["ttft_p50"], 2))
    lines = [
        f"### {_workload_line(ours)}",
        "",
        f"| level | TTFT p50 {a} / {b} (ms) | ratio | TTFT p99 {a} / {b} (ms) | ratio "
        f"| tokens/s {a} / {b} | ratio | turns/s {a} / {b} | errors {a} / {b} "
        f"| TTFT p50 ratio per part | server CPU µs/token {a} / {b} (front end + engine) "
        f"| background load, cores {a} / {b} | target |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|:-:|",
    ]
    for lv in ours["levels"]:
        other = by.get(_key(lv))
        if other is None:
            continue
        r = rat[_key(lv)]
        lines.append(
            f"| {_level(lv)} "
            f"| {_f(lv['ttft_ms']['p50'])} / {_f(other['ttft_ms']['p50'])} "
            f"| {_f(r['ttft_p50'], 2)} "
            f"| {_f(lv['ttft_ms']['p99'])} / {_f(other['ttft_ms']['p99'])} "
            f"| {_f(r['ttft_p99'], 2)} "
            f"| {_f(lv['output_tokens_per_s'])} / {_f(other['output_tokens_per_s'])} "
            f"| {_f(r['output_tokens_per_s'], 2)} "
            f"| {_f(lv['turns_per_s'], 2)} / {_f(other['turns_per_s'], 2)} "
            f"| {sum(lv['errors'].values())} / {sum(other['errors'].values())} "
            f"| {', '.join(per_round.get(_key(lv), [])) or '-'} "
            f"| {_f(_cpu(lv), 0)} + {_f(_cpu(lv, 'engine'), 0)} / "
            f"{_f(_cpu(other), 0)} + {_f(_cpu(other, 'engine'), 0)} "
            f"| {_f(_background(lv), 2)} / {_f(_background(other), 2)} "
            f"| {'yes' if r['meets_target'] else '**no**'} |"
        )
    lines.append("")
    return lines


def _turn_table(result: dict[str, Any]) -> list[str]:
    rows = []
    turns: set[int] = set()
    for side, name in labels(result).items():
        doc = result["runs"].get(side, {}).get("calls")
        for lv in (doc or {}).get("levels", []):
            turns |= {int(k) for k in lv["ttft_by_turn_ms"]}
            rows.append((name, lv))
    if not rows:
        return []
    ordered = sorted(turns)
    lines = [
        "### TTFT p50 by turn index (ms)",
        "",
        "| server | level | " + " | ".join(f"turn {t}" for t in ordered) + " |",
        "|---|---:|" + "---:|" * len(ordered),
    ]
    for name, lv in rows:
        cells = [_f(lv["ttft_by_turn_ms"].get(str(t), {}).get("p50")) for t in ordered]
        lines.append(f"| {name} | {_level(lv)} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _encoder_table(encoder: dict[str, Any] | None) -> list[str]:
    if not encoder:
        return []
    texts = list(next(iter(encoder["us_per_chunk"].values())))
    lines = [
        f"### Chunk encoder, µs per content chunk (target < {encoder['target_us']} µs)",
        "",
        "| encoder | " + " | ".join(texts) + " | same chunk as pydantic |",
        "|---|" + "---:|" * len(texts) + ":-:|",
    ]
    for name, cells in encoder["us_per_chunk"].items():
        same = "yes" if encoder["same_chunk_as_pydantic"][name] else "**no**"
        lines.append(
            f"| {name} | " + " | ".join(f"{v:.2f}" for v in cells.values()) + f" | {same} |"
        )
    lines.append("")
    return lines


def _schedule(result: dict[str, Any]) -> str:
    if result.get("mode") == "sequential":
        return (
            f"Sequential: one server at a time, {result['rounds']} round(s) in alternating order "
            f"({result['order']} first), fresh prompts per round; figures pool all rounds."
        )
    return (
        f"Interleaved: both servers up, each level split into {result.get('slices')} parts per "
        "server run alternately (A B B A ...), only one server under load at a time; figures "
        "pool the parts (identical requests to both servers)."
    )


def _load_range(result: dict[str, Any]) -> str:
    loads = [x["load"] for x in result.get("load_avg", [])]
    if not loads:
        return "-"
    return f"min {min(loads)}, median {sorted(loads)[len(loads) // 2]}, max {max(loads)} (2 cores)"


def markdown(result: dict[str, Any]) -> str:
    """The report committed next to the JSON and the plots."""
    m = result["machine"]
    gpus = ", ".join(m["gpus"]) or "none"
    servers = result["servers"]
    a, b = labels(result)["ours"], labels(result)["theirs"]
    tool = result.get("tool", "benchmarks.sidebyside")
    lines = [
        f"# {result.get('title', TITLE)}",
        "",
        f"Measured {result['started_at']} by `python -m {tool}` "
        f"({result['duration_s']:.0f} s in all) on one machine, checkpoint and vLLM build. "
        + _schedule(result),
        "",
        f"- Machine: {m['cpu_model']}, {m['cpu_cores']} cores, {m['memory_gib']} GiB; GPUs: {gpus}",
        f"- Versions: {m['vllm']}, {m['torch']}, Python {m['python']}, {m['transformers']}; "
        f"callgate {m['callgate_git_sha']}",
        f"- Checkpoint: `{result['checkpoint']['path']}`"
        + (" (the test suite's tiny random-weight Qwen2)" if result["checkpoint"]["tiny"] else ""),
        f"- Engine settings on both: {result['engine_shape']}",
        f"- Start-up to ready (s): {a} {servers.get('ours', {}).get('startup_s')}, "
        f"{b} {servers.get('theirs', {}).get('startup_s')}",
        f"- Machine load average (1 min) before each part: {_load_range(result)}",
        f"- Parts rerun because other processes used over {result.get('max_background')} "
        f"cores meanwhile: {len(result.get('discarded_parts') or [])}",
        "",
        "TTFT is measured to the first chunk with non-empty content (a role-only chunk does not "
        f"count); throughput is output tokens/s over the level's wall time. Ratio = {a} / "
        f"{b}: TTFT below 1 and throughput above 1 favour {a}. Target: TTFT p50 "
        "ratio <= 1 and tokens/s ratio >= 1 at every level. This box is shared and noisy: "
        "compare only figures from one run. Server CPU is the CPU time the server process (HTTP, "
        "tokenizer, detokenizer) and its engine core used per output token; it hardly depends on "
        "the background load, so it is the steadier comparison of the work each server does. "
        "Background load is the CPU other processes on the machine used while a level ran, in "
        "cores (out of the machine's total); anything near or above one core distorts latency.",
        "",
    ]
    lines += _comparison_table("single", result)
    lines += _comparison_table("calls", result)
    lines += _turn_table(result)
    lines += _encoder_table(result.get("encoder"))
    lines += (
        []
        if result.get("plots") is False
        else [
            "### Plots",
            "",
            "![TTFT vs concurrency](ttft_vs_concurrency.png)",
            "![Throughput vs concurrency](throughput_vs_concurrency.png)",
            "![TTFT by turn index](ttft_by_turn.png)",
            "",
        ]
    )
    return "\n".join(lines)
