"""Shared pieces of the SmolLM2-135M-Instruct evidence scripts (``examples/smollm2_*.py``).

Conditions are written as short strings, so a run's command line says exactly what was compared:

- ``greedy``: the plain model, greedy decoding (deterministic: one answer per prompt);
- ``temp:T``: the plain model, pure sampling at temperature ``T`` (``top_k=0``, ``top_p=1``);
- ``add:S``: minds with additive noise ``y = Norm(x) + z``, ``z ~ N(0, S^2 I)`` (the paper; S = 0.02);
- ``mult:S``: minds with gain noise ``y = Norm(x) * (1 + z)``;
- ``weight:S``: additive minds with per-layer scale ``S * rms(g_l)`` (``sigma_scale="weight"``,
  where the installed manyminds has it).

Minds decode greedily, one mind per answer (minds ``0 .. k-1`` answer every prompt), as in B-Trans.
Prompts are conversations (``[{"role": "user", "content": q}]``): the chat template is applied once,
as TRL does (:func:`manyminds.rows.tokenize_prompts`); SmolLM2's template adds its default system
prompt and no second BOS.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

MODEL = "smollm2-135m-instruct"
DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Condition:
    """One way of drawing ``k`` answers per prompt."""
    name: str
    kind: str                 # "greedy" | "temperature" | "minds"
    value: float = 0.0        # temperature, or sigma
    noise: str = "additive"
    sigma_scale: str = "absolute"

    @classmethod
    def parse(cls, text: str) -> Condition:
        """``greedy``, ``temp:T``, ``add:S``, ``mult:S`` or ``weight:S`` (see the module docstring)."""
        head, _, value = text.strip().partition(":")
        if head == "greedy" and not value:
            return cls("greedy", "greedy")
        try:
            x = float(value)
        except ValueError:
            raise ValueError(f"condition {text!r}: write greedy, temp:T, add:S, mult:S or weight:S") from None
        if x < 0:
            raise ValueError(f"condition {text!r}: the value must be >= 0")
        if head == "temp":
            return cls(f"temperature {x:g}", "temperature", x)
        if head == "add":
            return cls(f"minds add {x:g}", "minds", x)
        if head == "mult":
            return cls(f"minds mult {x:g}", "minds", x, noise="multiplicative")
        if head == "weight":
            return cls(f"minds weight {x:g}", "minds", x, sigma_scale="weight")
        raise ValueError(f"condition {text!r}: write greedy, temp:T, add:S, mult:S or weight:S")


def parse_conditions(text: str) -> list[Condition]:
    return [Condition.parse(t) for t in text.split(",") if t.strip()]


def load_model(threads: int):
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct (float32, CPU, eval mode)."""
    import manyminds

    torch.set_num_threads(threads)
    model, tokenizer = manyminds.load(MODEL)
    model.eval()
    return model, tokenizer


def chat(question: str) -> list[dict]:
    """A one-turn conversational prompt (TRL's format)."""
    return [{"role": "user", "content": question}]


def draw(model, tokenizer, prompts: list, condition: Condition, k: int, *, max_new_tokens: int, seed: int,
         batch_size: int) -> list[list[str]]:
    """``k`` answers to each prompt under ``condition``: ``[len(prompts)][k]`` strings.

    Greedy decoding is deterministic, so its one answer is repeated ``k`` times (diversity 0 exactly).
    """
    from manyminds.evaluation.generation import generate_completions

    n = len(prompts)
    if condition.kind == "greedy":
        out = generate_completions(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size)
        return [[a] * k for a in out]
    rows = [p for p in prompts for _ in range(k)]                    # prompt-major: [n * k]
    if condition.kind == "temperature":
        out = generate_completions(model, tokenizer, rows, max_new_tokens=max_new_tokens,
                                   temperature=condition.value, seed=seed, batch_size=batch_size)
    else:
        from manyminds.population import Population

        kwargs = {"sigma_scale": condition.sigma_scale} if condition.sigma_scale != "absolute" else {}
        pop = Population(model, sigma=condition.value, seed=seed, noise=condition.noise, **kwargs)
        out = generate_completions(model, tokenizer, rows, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   population=pop, mind_ids=list(range(k)) * n)
    return [out[i * k:(i + 1) * k] for i in range(n)]


@torch.no_grad()
def answer_logliks(model, tokenizer, prompts: list, answers: list[str], batch_size: int = 16) -> list[float]:
    """Coherence: mean token log-likelihood of each answer under the plain model.

    ``c_i = (1 / |y_i|) * sum_t log p(y_{i,t} | x_i, y_{i,<t})``, with ``x_i`` the chat-formatted prompt
    (template applied once) and ``y_i`` the answer's tokens (re-encoded, no special tokens). Empty
    answers give ``nan``. Rows are right-padded; ``[B, T]`` per batch.
    """
    from manyminds.rows import pad_id_of, tokenize_prompts

    prompt_ids = tokenize_prompts(tokenizer, prompts)
    answer_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    pad = pad_id_of(tokenizer)
    device = next(model.parameters()).device
    out: list[float] = []
    for s in range(0, len(prompts), batch_size):
        rows = [p + a for p, a in zip(prompt_ids[s:s + batch_size], answer_ids[s:s + batch_size])]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)          # [B, T]
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, :len(r)] = torch.tensor(r)
            mask[b, :len(r)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()  # [B, T, V]
        logp = F.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(device))[..., 0]  # [B, T-1]
        for b, (p, a) in enumerate(zip(prompt_ids[s:s + batch_size], answer_ids[s:s + batch_size])):
            if not a:
                out.append(math.nan)
                continue
            # token t of the row is predicted at position t-1: the answer spans positions len(p)-1 .. len(p)+len(a)-2
            out.append(float(logp[b, len(p) - 1:len(p) + len(a) - 1].mean()))
    return out


def machine() -> str:
    """One line naming the machine and the library versions."""
    import transformers

    return (f"{platform.processor() or platform.machine()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
            f"Python {platform.python_version()}")


class Clock:
    """Wall-clock seconds per named phase."""

    def __init__(self):
        self.start = time.time()
        self.seconds: dict[str, float] = {}

    def lap(self, name: str, since: float) -> float:
        self.seconds[name] = round(time.time() - since, 1)
        return self.seconds[name]

    @property
    def total(self) -> float:
        return round(time.time() - self.start, 1)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))


def new_results(args, clock: Clock, **counts) -> dict:
    """The results record of a run: its settings (``args`` plus ``counts``), machine, date and clock."""
    return {"settings": {**{k: str(v) for k, v in vars(args).items()}, "k": args.k, **counts},
            "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "conditions": {}, "answers": {}, "seconds": clock.seconds}


def write_results(out: Path, results: dict, clock: Clock, table_text: str, *also: str) -> None:
    """End of a run: total time, ``results.json`` and ``results.md`` under ``out``, the table printed."""
    results["total_seconds"] = clock.total
    write_json(out / "results.json", results)
    (out / "results.md").write_text(table_text)
    print()
    print(table_text)
    print(f"total {results['total_seconds']} s; wrote {out}/results.json, {', '.join(('results.md', *also))}")
