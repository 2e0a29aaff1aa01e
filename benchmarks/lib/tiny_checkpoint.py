"""Build a tiny Qwen2-architecture checkpoint with random weights for the test suite.

The suite cannot download a model (no model hub here), and protocol, streaming, abort and load
tests do not need a model that makes sense: they need one that vLLM loads through its real
Qwen2 code path, whose tokenizer handles English and Chinese and the ChatML chat template, and
that decodes to a fixed length. head_dim is 64 because the CPU attention kernels reject smaller
heads.

Random weights would emit an end-of-sequence token now and then (about one turn in twenty at 32
tokens), which makes `finish_reason: length` flaky. So the weights are random except for one
planted circuit: the value-projection bias and `o_proj` add a constant to residual dimension 0 at
every position, and the (tied) embedding rows of the special tokens are strongly negative in that
dimension, so the model practically never generates `<|endoftext|>`, `<|im_start|>` or
`<|im_end|>`. Ordinary tokens stay near-uniform gibberish.

Usage: `python -m benchmarks.lib.tiny_checkpoint DEST [--check]` or `build(Path(DEST))`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]

HIDDEN = 256
HEADS = 4
KV_HEADS = 2
LAYERS = 2
INTERMEDIATE = 512
MAX_POSITIONS = 4096
VOCAB_TARGET = 800
SEED = 1234

# Qwen2.5's template without its default system line: role, newline, content, end marker.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# Qwen2.5-Instruct's generation defaults, so tests can see the server merge them.
GENERATION_DEFAULTS = {
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "repetition_penalty": 1.05,
}

_ENGLISH = [
    "Hello, valued Alibaba Cloud customer. This is a test of the opening message.",
    "We apologize for any inconvenience.",
    "What is this about?",
    "Who are you? I am Qwen, a large language model.",
    "This is a test opening message.",
    "Could you tell me your address and the best time to call you back?",
    "The weather in Hangzhou is sunny today, with a light wind from the east.",
    "Your order has been shipped and will arrive within three business days.",
    "Sorry, could you say that again? The line was not clear.",
    "Thank you for calling. Have a nice day and goodbye.",
    "Please hold on while I check the details of your account.",
    "The quick brown fox jumps over the lazy dog.",
    "Numbers like 0 1 2 3 4 5 6 7 8 9 and 2024 appear in dates and prices.",
]
_CHINESE = [
    "您好，尊敬的阿里云客户，这是一条开场白测试消息。给您带来不便，敬请谅解。",
    "请问这是关于什么的？",
    "你是谁？我是通义千问，一个大语言模型。",
    "杭州今天天气晴朗，东风微弱，气温二十五度。",
    "您的订单已经发货，预计三个工作日内送达。",
    "不好意思，您能再说一遍吗？刚才信号不太好。",
    "感谢您的来电，祝您生活愉快，再见。",
    "请稍等，我帮您查一下账户的详细信息。",
    "请问您方便告诉我您的地址和回电的时间吗？",
    "我们的客服人员会在二十四小时内联系您。",
    "北京、上海、广州和深圳都是中国的大城市。",
]


def _train_tokenizer() -> Any:
    """Train a byte-level BPE on a few English and Chinese lines and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeated so that frequent Chinese characters merge into whole-character tokens.
    tok.train_from_iterator((_ENGLISH + _CHINESE) * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _shape_weights(model: Any, special_ids: list[int]) -> None:
    """Plant the no-special-token circuit and make greedy decoding less degenerate.

    With the default init (std 0.02, tied embeddings, unit final norm) the next-token logits are
    dominated by the current token's self-similarity, so greedy decoding repeats one token. Unit
    embeddings and a small zero-mean final-norm gain turn the logits into a random bilinear map of
    the current token (std about 2.4), so greedy output varies and sampling still has a spread.
    """
    import torch

    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.copy_(torch.randn(emb.shape, generator=generator))
        emb[:, 0] = 0.0
        for i in special_ids:
            emb[i, 0] = -3.0
        for layer in model.model.layers:
            attn = layer.self_attn
            # Attention weights sum to one, so b_v passes through unchanged and o_proj maps it
            # onto residual dimension 0 at every position: +4 per layer at any width.
            attn.v_proj.bias.fill_(0.125)
            attn.o_proj.weight[0, :] = 32.0 / attn.o_proj.weight.shape[1]
        gain = model.model.norm.weight
        gain.copy_(0.15 * torch.randn(gain.shape, generator=generator))
        gain[0] = 1.0


def build(dest: Path) -> Path:
    """Write the checkpoint (config, weights, tokenizer, generation config) into `dest`.

    Deterministic: the same files for the same library versions. Returns `dest`.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    special_ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    vocab_size = len(tokenizer)
    if max(tokenizer.get_vocab().values()) >= vocab_size:
        raise AssertionError("tokenizer ids are not contiguous")
    endoftext = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    save_model(dest, vocab_size=vocab_size, never_ids=special_ids, eos_ids=[im_end, endoftext])
    tokenizer.save_pretrained(dest)
    return dest


def save_model(
    dest: Path,
    *,
    vocab_size: int,
    never_ids: list[int],
    eos_ids: list[int],
    hidden: int = HIDDEN,
    heads: int = HEADS,
    kv_heads: int = KV_HEADS,
    intermediate: int = INTERMEDIATE,
) -> None:
    """Write config, random weights (with the circuit that keeps `never_ids` from being
    generated, see `_shape_weights`) and a generation config with Qwen's defaults into `dest`.

    `eos_ids[0]` is the end of a turn (`<|im_end|>`), `eos_ids[1]` the end of text, which is
    also the padding and beginning-of-sequence id, as in Qwen's checkpoints. Shared by
    `benchmarks/lib/qwen_checkpoint.py`.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    im_end, endoftext = eos_ids
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=LAYERS,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=MAX_POSITIONS,
        max_window_layers=LAYERS,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=endoftext,
        eos_token_id=im_end,
        pad_token_id=endoftext,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(config)
    _shape_weights(model, never_ids)
    model = model.to(torch.bfloat16)
    model.save_pretrained(dest, safe_serialization=True)

    generation_config = {
        "bos_token_id": endoftext,
        "eos_token_id": [im_end, endoftext],
        "pad_token_id": endoftext,
        **GENERATION_DEFAULTS,
    }
    (dest / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")


def check_in_vllm(model_dir: Path) -> str:
    """Load the checkpoint in vLLM's `AsyncLLM` (CPU settings) and return a 16-token reply.

    For whoever changes this builder: the API tests need vLLM, not transformers, to accept it.
    Needs `VLLM_CPU_KVCACHE_SPACE=1` on CPU; the engine core is a spawned process, which is why
    this only runs from `main`.
    """
    import asyncio
    import os

    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    async def run() -> str:
        args = AsyncEngineArgs(model=str(model_dir), enforce_eager=True, max_model_len=2048)
        engine = AsyncLLM.from_engine_args(args)
        try:
            prompt = f"{IM_START}user\n你好, who are you?{IM_END}\n{IM_START}assistant\n"
            params = SamplingParams(max_tokens=16, temperature=0)
            text, reason = "", None
            async for out in engine.generate(prompt, params, request_id="check"):
                text, reason = out.outputs[0].text, out.outputs[0].finish_reason
            if reason != "length":
                raise AssertionError(f"expected 16 tokens, got finish_reason {reason!r}")
            return text
        finally:
            engine.shutdown()

    return asyncio.run(run())


def main(argv: list[str]) -> int:
    """CLI: `python -m benchmarks.lib.tiny_checkpoint DEST [--check]` (--check: generate in
    vLLM)."""
    args = [a for a in argv if a != "--check"]
    if len(args) != 1:
        sys.stderr.write("usage: python -m benchmarks.lib.tiny_checkpoint DEST [--check]\n")
        return 2
    out = build(Path(args[0]))
    sys.stdout.write(f"{out}\n")
    if "--check" in argv:
        sys.stdout.write(f"vLLM reply: {check_in_vllm(out)!r}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
