"""Random-init causal LMs of standard transformers architectures.

Used by tests (tiny sizes, several architecture families), by benchmarks (real shapes such
as Qwen2-0.5B or Llama-3.2-1B; speed does not depend on weight values) and by the zoo,
which trains one of these from scratch.

Example:
    >>> model = random_model("qwen2", vocab_size=64)          # tiny, float32, eval mode
    >>> model = random_model("qwen2-0.5b", dtype=torch.bfloat16)  # real shape, random weights
"""

from __future__ import annotations

import torch
import transformers

# Tiny shapes: H=32, 2 layers, 4 heads (2 kv heads where the family has GQA).
_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=256)

# family -> (config class name, kwargs). Families cover RMSNorm (Llama, Qwen2, Qwen3 with
# per-head q/k norms, Mistral, Gemma with (1 + w) scaling) and LayerNorm-with-bias (GPT-2
# with Conv1D projections, OPT, Phi).
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", dict(_TINY, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", dict(_TINY, num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(_TINY, num_key_value_heads=2, head_dim=8)),
    "mistral": ("MistralConfig", dict(_TINY, num_key_value_heads=2, sliding_window=None)),
    "gemma": ("GemmaConfig", dict(_TINY, num_key_value_heads=2, head_dim=8)),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=256)),
    "opt": ("OPTConfig", dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=256,
                              word_embed_proj_dim=32)),
    "phi": ("PhiConfig", dict(_TINY, num_key_value_heads=4)),
    # Post-norm ("sandwich") layouts: norms also on the outputs of the attention/MLP branches.
    "gemma2": ("Gemma2Config", dict(_TINY, num_key_value_heads=2, head_dim=8)),
    "olmo2": ("Olmo2Config", dict(_TINY, num_key_value_heads=2)),
    "glm4": ("Glm4Config", dict(_TINY, num_key_value_heads=2, head_dim=8)),
    # Real shapes for benchmarks (random init).
    "qwen2-0.5b": ("Qwen2Config", dict(hidden_size=896, intermediate_size=4864,
                                       num_hidden_layers=24, num_attention_heads=14,
                                       num_key_value_heads=2, vocab_size=151936,
                                       max_position_embeddings=32768, tie_word_embeddings=True,
                                       rope_theta=1000000.0)),
    "llama-1b": ("LlamaConfig", dict(hidden_size=2048, intermediate_size=8192,
                                     num_hidden_layers=16, num_attention_heads=32,
                                     num_key_value_heads=8, vocab_size=128256,
                                     max_position_embeddings=131072, tie_word_embeddings=True)),
}

TINY_FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "gemma", "gpt2", "opt", "phi"]
POST_NORM_FAMILIES = ["gemma2", "olmo2", "glm4"]


def random_config(family: str, vocab_size: int | None = None, **overrides) -> transformers.PretrainedConfig:
    """Config of ``family`` (a key of :data:`FAMILIES`) with optional overrides."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of: {', '.join(FAMILIES)}")
    cls_name, kwargs = FAMILIES[family]
    kwargs = dict(kwargs)
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
    if family in TINY_FAMILIES or family in POST_NORM_FAMILIES:
        # Keep special ids inside a tiny vocabulary (GPT-2/OPT default to 50256 / 2).
        kwargs.update(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    kwargs.update(overrides)
    return getattr(transformers, cls_name)(**kwargs)


def random_model(family: str, vocab_size: int | None = 64, seed: int = 0,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 **overrides) -> transformers.PreTrainedModel:
    """A random-init ``AutoModelForCausalLM`` of ``family``, in eval mode.

    Args:
        family: key of :data:`FAMILIES` (tiny families or real shapes such as ``"qwen2-0.5b"``).
        vocab_size: vocabulary size (``None`` keeps the family's own, e.g. 151936 for Qwen2).
        seed: torch seed for the initialization (the global RNG is restored afterwards).
        dtype, device: where the weights live.
        **overrides: any config field.
    """
    if vocab_size is not None and family in ("qwen2-0.5b", "llama-1b") and vocab_size == 64:
        vocab_size = None  # real shapes keep their real vocabulary by default
    config = random_config(family, vocab_size=vocab_size, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.to(device).eval()
