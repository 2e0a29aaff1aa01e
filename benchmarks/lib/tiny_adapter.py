"""Build a tiny LoRA adapter (peft) for the tiny checkpoint (`benchmarks.lib.tiny_checkpoint`).

An adapter fresh from peft changes nothing (its B matrices start at zero). This one has large
seeded random A and B on the attention and MLP projections, so that the greedy reply through
it differs from the base model's, which is what the LoRA tests check. Random, so its replies are
gibberish too; rank `RANK`, saved with `save_pretrained` as a trained adapter would be.

Usage: `build_adapter(MODEL_DIR, DEST)`.
"""

from __future__ import annotations

from pathlib import Path

RANK = 8
TARGETS = ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
SCALE = 0.5  # std of the LoRA weights: large enough to move the argmax of most steps
SEED = 4321


def build_adapter(model_dir: Path, dest: Path, rank: int = RANK) -> Path:
    """Write `adapter_config.json` and `adapter_model.safetensors` into `dest`; returns it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(SCALE * torch.randn(param.shape, generator=generator))
    dest = Path(dest)
    peft_model.save_pretrained(dest)
    return dest
