"""Random-init causal LMs of standard transformers architectures.

Used by tests (tiny sizes, several architecture families), by benchmarks (real shapes such
as Qwen2-0.5B or Llama-3.2-1B; speed does not depend on weight values) and by the zoo,
which trains one of these from scratch; and the one conversion between architectures that the
zoo and mind export share: a Qwen2/Mistral model rebuilt as the Llama model computing the same
function (:func:`llama_equivalent_config`, :func:`rebuild_as`).

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


# Config fields a Qwen2 or Mistral config shares with LlamaConfig, same meaning.
LLAMA_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
                "rms_norm_eps", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id",
                "tie_word_embeddings", "rope_parameters", "attention_dropout")


def llama_equivalent_config(config, mlp_bias: bool = False) -> transformers.LlamaConfig | None:
    """The ``LlamaConfig`` computing what a Qwen2 or Mistral ``config`` computes, or ``None``.

    Qwen2 is Llama with biases on q/k/v; ``attention_bias=True`` adds those and an ``o_proj``
    bias (zero once rebuilt, :func:`rebuild_as`). Mistral without sliding windows is Llama.
    ``mlp_bias=True`` also gives the MLP projections (zero) biases, for offsets to fold into.
    ``None`` for other architectures and for sliding-window attention.
    """
    if config.model_type not in ("qwen2", "mistral"):
        return None
    if getattr(config, "use_sliding_window", False) or (config.model_type == "mistral" and config.sliding_window):
        return None
    if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or [])):
        return None
    fields = {f: getattr(config, f) for f in LLAMA_FIELDS if getattr(config, f, None) is not None}
    fields.setdefault("head_dim", config.hidden_size // config.num_attention_heads)
    return transformers.LlamaConfig(**fields, attention_bias=True, mlp_bias=mlp_bias)


def rebuild_as(model: torch.nn.Module, config) -> transformers.PreTrainedModel:
    """A fresh model of ``config`` holding ``model``'s weights, in eval mode, on its device and dtype.

    Parameters that ``model`` lacks must be biases; they are set to zero (tied weights such as
    ``lm_head.weight`` are shared, not missing). The global RNG is left untouched.

    Raises:
        ValueError: a weight of ``model`` has no place in the new model, or the new model needs a
            weight that is not a bias.
    """
    dtype = next(model.parameters()).dtype
    with torch.random.fork_rng(devices=[]):
        rebuilt = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = rebuilt.load_state_dict(model.state_dict(), strict=False)
    if unexpected:
        raise ValueError(f"rebuilding {type(model).__name__} as {type(rebuilt).__name__} left weights "
                         f"unused: {unexpected[:3]}")
    params = dict(rebuilt.named_parameters())
    for key in missing:
        if not key.endswith("bias") or key not in params:
            if key.endswith("weight") and getattr(config, "tie_word_embeddings", False):
                continue
            raise ValueError(f"rebuilding {type(model).__name__} lost weight {key}")
        with torch.no_grad():
            params[key].zero_()
    return rebuilt.to(next(model.parameters()).device).eval()
