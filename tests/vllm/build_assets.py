"""Builds what the real-vLLM tests serve, with no model hub: a tiny Llama, its tokenizer and
LoRA adapters. Runs inside the vLLM virtualenv (torch, transformers, tokenizers, peft), not the
project's: ``<vllm venv>/bin/python tests/vllm/build_assets.py OUT``.

- ``OUT/base``: a Llama with random weights (seed 0; hidden 128, 2 layers, 4 heads of size 32,
  intermediate 256, vocabulary 4,096, 512 positions: about 1.4 M parameters) and a byte-level
  BPE tokenizer trained on Python's standard-library sources, with a chat template.
- ``OUT/a``, ``OUT/b``: rank-8 adapters on ``q_proj`` and ``v_proj`` with different random
  non-zero B weights, so that base, a and b give different greedy answers.
- ``OUT/big``: a rank-16 adapter, above the server's ``--max-lora-rank 8`` (vLLM refuses it).

The answers are nonsense; what matters is that every call goes through vLLM's real code.
Everything is seeded: two builds give the same files' contents.
"""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

VOCAB = 4096
SPECIAL = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ADAPTERS = {"a": (8, 1), "b": (8, 2), "big": (16, 3)}  # name: (rank, seed)


def corpus() -> list[str]:
    """Python's own standard-library sources: on every machine, no download."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))[:120]
    return [str(p) for p in files]


def tokenizer(out: Path) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=SPECIAL, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train(corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="</s>",
    )  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def base(out: Path, tok: PreTrainedTokenizerFast) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, head_dim=32, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False, torch_dtype="float32",
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)


def adapter(base_dir: Path, out: Path, rank: int, seed: int) -> None:
    model = LlamaForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
        bias="none", task_type="CAUSAL_LM",
    )  # fmt: skip
    peft = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_" in name:  # B starts at zero (no effect): random, large enough to matter
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    peft.save_pretrained(out)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer(out / "base")
    base(out / "base", tok)
    for name, (rank, seed) in ADAPTERS.items():
        adapter(out / "base", out / name, rank, seed)
    manifest = {"base": "base", "adapters": {n: {"rank": r} for n, (r, _) in ADAPTERS.items()}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
