"""Train the zoo's small causal LMs from scratch: a character-level tokenizer and a short
supervised run on the bundled tasks' formats.

Everything here is standard transformers: the tokenizer is a ``PreTrainedTokenizerFast`` over a
``tokenizers`` WordLevel model with one token per character, and the model is an ordinary
``AutoModelForCausalLM`` (Qwen2, GPT-2, ...) trained with AdamW on completion tokens only.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from manyminds.rows import encode_pair, pad_id_of, pad_left, pad_rows, tokenize_prompts

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = ["\n"] + [chr(i) for i in range(32, 127)]  # newline + printable ASCII
VOCAB_SIZE = 128  # 99 used ids, rounded up for aligned matmuls


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character; pad=0, bos=1, eos=2, unk=3; left padding (for generation)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>", padding_side="left",
                                   model_max_length=256)


@dataclass
class TrainSettings:
    """How a zoo model is trained (see :data:`manyminds.zoo.ZOO`)."""
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01
    seed: int = 0
    # (task, knobs, weight): the training mixture, drawn from train splits only.
    mixture: list = field(default_factory=lambda: [
        ("arith", dict(digits=1, ops=3), 0.6),   # the default arith difficulty
        ("arith", dict(digits=1, ops=2), 0.15),
        ("arith", dict(digits=1, ops=4), 0.05),
        ("arith", dict(digits=2, ops=1), 0.1),
        ("terse", dict(digits=1, ops=2), 0.05),  # the prefs task's terse style
        ("controls", dict(digits=1), 0.05),      # the conflict task's unambiguous +/- prompts
    ])


def training_pool(settings: TrainSettings, per_part: int = 4000) -> list[list[tuple[str, str]]]:
    """Lists of (prompt, completion) pairs per mixture part, from the tasks' train splits."""
    from manyminds.tasks import load_task
    from manyminds.tasks.arith import problem_space

    pools = []
    for i, (kind, knobs, _) in enumerate(settings.mixture):
        seed = settings.seed * 100 + i
        if kind == "arith":
            # small problem spaces (e.g. 1 digit, 2 ops) hold fewer distinct train problems
            rows = load_task("arith", "train", n=min(per_part, problem_space(**knobs) // 2), seed=seed, **knobs)
            pools.append([(r["prompt"], r["completion"]) for r in rows])
        elif kind == "terse":
            rows = load_task("prefs", "train", n=max(1, per_part // 4), seed=seed, style_fraction=1.0, **knobs)
            pools.append([(r["prompt"], r["chosen"] if r["group"] == "terse" else r["rejected"]) for r in rows])
        elif kind == "controls":
            rows = load_task("conflict", "train", n=max(1, per_part // 4), seed=seed, conflict_fraction=0.0, **knobs)
            pools.append([(r["prompt"], r["completion"]) for r in rows])
        else:
            raise ValueError(f"unknown mixture part {kind!r}")
    return pools


def encode_batch(tokenizer, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` ``[B, T]``: each (prompt,
    completion) pair tokenised as TRL's SFTTrainer does (:func:`manyminds.rows.encode_pair`: the
    completion gets the eos), labels ``-100`` on the prompt and the padding (loss on completion + eos)."""
    rows = [encode_pair(tokenizer, prompt, completion, max_length=None) for prompt, completion in pairs]
    ids = pad_rows([r["input_ids"] for r in rows], pad_id_of(tokenizer))         # [B, T]
    mask = pad_rows([[1] * len(r["input_ids"]) for r in rows], 0)                 # [B, T]
    completion = pad_rows([r["completion_mask"] for r in rows], 0)                # [B, T]
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(completion == 0, -100)}


def train(model, tokenizer, settings: TrainSettings, progress=None) -> list[float]:
    """Train ``model`` in place; returns the loss curve. ``progress(step, loss)`` is called per step."""
    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    # never draw more distinct problems per part than the run can see (keeps tiny builds fast)
    pools = training_pool(settings, per_part=min(4000, settings.steps * settings.batch_size))
    weights = [w for _, _, w in settings.mixture]
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                            betas=(0.9, 0.98))

    def lr_at(step):  # linear warm-up, cosine decay to 10%
        if step < settings.warmup:
            return (step + 1) / settings.warmup
        t = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses = []
    for step in range(settings.steps):
        parts = rng.choices(range(len(pools)), weights=weights, k=settings.batch_size)
        batch = encode_batch(tokenizer, [rng.choice(pools[p]) for p in parts])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress is not None:
            progress(step, losses[-1])
    model.eval()
    return losses


@torch.no_grad()
def greedy_accuracy(model, tokenizer, rows, batch_size: int = 100, max_new_tokens: int = 48) -> float:
    """Fraction of ``rows`` (dicts with prompt, answer) whose greedy completion verifies."""
    from manyminds.tasks import verify_answer

    correct = 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        enc = pad_left(tokenize_prompts(tokenizer, [r["prompt"] for r in chunk]), pad_id_of(tokenizer))  # [b, T]
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += sum(verify_answer(t, r["answer"]) for t, r in zip(texts, chunk))
    return correct / len(rows)
