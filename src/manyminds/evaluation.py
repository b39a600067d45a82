"""Evaluate a causal LM on a verifiable task: single answers, pass@k, and majority vote over
minds versus over temperature samples.

Three ways of answering each prompt, each scored with the ``####`` verifier
(:func:`manyminds.tasks.verify_answer`):

- ``greedy``: the mean (noise-free) model, greedy decoding: pass@1;
- ``samples``: ``k`` temperature samples of the mean model;
- ``minds``: ``k`` minds of a :class:`~manyminds.population.Population` (ids ``0..k-1``), each
  decoding greedily by default (``mind_temperature=0``): the population's own diversity.

For ``samples`` and ``minds``: pass@1 (mean correctness of one draw), pass@k (unbiased
estimator, Chen et al. 2021), majority@k (accuracy of the majority final answer) and the mean
number of distinct final answers per prompt.

    >>> result = evaluate(model, tokenizer, load_task("arith", split="test", n=100), EvalConfig(k=8))
    >>> result.table()  # rich Table
    >>> result.to_dict()  # JSON-ready
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from manyminds.metrics import majority_vote_accuracy, mean_pass_at_k, unique_answers
from manyminds.tasks import extract_answer, normalize_answer, verify_answer


@dataclass
class EvalConfig:
    """Settings of :func:`evaluate`."""

    k: int = field(default=8, metadata={"help": "samples / minds per prompt (pass@k, majority@k)"})
    sigma: float = field(default=0.02, metadata={"help": "noise scale of the minds"})
    mind_seed: int = field(default=0, metadata={"help": "population seed of the minds"})
    temperature: float = field(default=1.0, metadata={"help": "temperature of the mean model's samples"})
    mind_temperature: float = field(default=0.0, metadata={"help": "temperature of each mind (0 = greedy)"})
    max_new_tokens: int = field(default=48, metadata={"help": "completion length limit"})
    batch_size: int = field(default=64, metadata={"help": "generated rows per forward batch"})
    seed: int = field(default=0, metadata={"help": "sampling seed (the global RNG is left untouched)"})

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not self.sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")
        if self.mind_temperature < 0:
            raise ValueError(f"mind_temperature must be >= 0 (0 = greedy), got {self.mind_temperature}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")


@dataclass
class DecodingScores:
    """Scores of one way of answering (``k`` draws per prompt)."""

    name: str  # "greedy", "samples" or "minds" (the JSON key)
    label: str  # human description for tables
    k: int
    pass_at_1: float
    pass_at_k: float
    majority_at_k: float
    unique_answers: float
    answer_rate: float


@dataclass
class EvalResult:
    """Scores of every decoding, plus the settings and the number of prompts."""

    n_prompts: int
    config: EvalConfig
    rows: list[DecodingScores]
    completions: dict[str, list[list[str]]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """JSON-ready: settings, then one entry per decoding keyed by its name."""
        out = {"n_prompts": self.n_prompts, "config": asdict(self.config)}
        for r in self.rows:
            out[r.name] = {"k": r.k, "pass@1": r.pass_at_1, f"pass@{r.k}": r.pass_at_k,
                           f"majority@{r.k}": r.majority_at_k, "unique_answers": r.unique_answers,
                           "answer_rate": r.answer_rate}
        return out

    def table(self, title: str | None = None):
        """A rich ``Table`` with one row per decoding."""
        from rich.table import Table

        k = self.config.k
        table = Table(title=title or f"evaluation on {self.n_prompts} prompts (k={k}, sigma={self.config.sigma})")
        for col in ("decoding", "draws", "pass@1", f"pass@{k}", f"majority@{k}", "unique answers", "answered"):
            table.add_column(col, justify="left" if col == "decoding" else "right")
        for r in self.rows:
            def pct(x):
                return "-" if math.isnan(x) else f"{x:.1%}"

            table.add_row(r.label, str(r.k), pct(r.pass_at_1), pct(r.pass_at_k), pct(r.majority_at_k),
                          f"{r.unique_answers:.2f}", pct(r.answer_rate))
        return table


def score_draws(name: str, label: str, completions: Sequence[Sequence[str]], answers: Sequence[str],
                k: int, verify: Callable[[str, str], float] = verify_answer) -> DecodingScores:
    """Scores of ``completions[p]`` (the draws for prompt ``p``) against ``answers[p]``.

    pass@1 and pass@k use the unbiased estimator over the ``n = len(completions[p])`` draws;
    majority@k votes over the final answers of the first ``k`` draws.
    """
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} prompts of completions but {len(answers)} answers")
    correct = [[verify(c, a) for c in draws] for draws, a in zip(completions, answers)]
    finals = [[extract_answer(c) for c in draws[:k]] for draws in completions]
    n = min(len(d) for d in completions)
    return DecodingScores(
        name=name, label=label, k=k,
        pass_at_1=mean_pass_at_k(correct, 1),
        pass_at_k=mean_pass_at_k(correct, k) if n >= k else float("nan"),
        majority_at_k=majority_vote_accuracy(finals, [normalize_answer(str(a)) for a in answers]),
        unique_answers=sum(unique_answers(f) for f in finals) / len(finals),
        answer_rate=sum(a is not None for f in finals for a in f) / sum(len(f) for f in finals),
    )


@torch.no_grad()
def generate_rows(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 64,
                  temperature: float = 0.0, seed: int = 0, population=None,
                  mind_ids: Sequence[int] | None = None) -> list[str]:
    """One completion per prompt row (new text only), batched, left-padded, without special tokens.

    With ``population`` and ``mind_ids`` (one id per row), row ``b`` is generated by mind
    ``mind_ids[b]``. ``temperature=0`` decodes greedily; sampling uses a private RNG stream
    seeded by ``seed`` (the global RNG is restored afterwards).
    """
    device = next(model.parameters()).device
    texts: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                chunk = list(prompts[start:start + batch_size])
                enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False,
                                padding_side="left")
                enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                kwargs = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
                          "eos_token_id": tokenizer.eos_token_id, "do_sample": temperature > 0}
                if temperature > 0:
                    kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
                if population is not None:
                    with population.minds(list(mind_ids[start:start + batch_size])):
                        out = model.generate(**enc, **kwargs)
                else:
                    out = model.generate(**enc, **kwargs)
                texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return texts


def _by_prompt(flat: list[str], k: int) -> list[list[str]]:
    return [flat[i:i + k] for i in range(0, len(flat), k)]


def evaluate(model, tokenizer, dataset, config: EvalConfig | None = None, progress=None) -> EvalResult:
    """Greedy pass@1, temperature samples and minds on a dataset with ``prompt`` and ``answer`` columns.

    Args:
        model: a causal LM (also a ``PeftModel``).
        tokenizer: its tokenizer.
        dataset: ``datasets.Dataset`` (or list of dicts) with string ``prompt`` and ``answer``.
        config: :class:`EvalConfig`.
        progress: optional callable ``progress(stage: str)`` called before each stage.
    """
    from manyminds.population import Population

    config = config or EvalConfig()
    columns = getattr(dataset, "column_names", None) or (list(dataset[0]) if len(dataset) else [])
    missing = [c for c in ("prompt", "answer") if c not in columns]
    if missing:
        raise ValueError(f"the evaluation dataset needs 'prompt' and 'answer' columns; missing {missing}")
    if any(not isinstance(r["prompt"], str) for r in dataset):
        raise ValueError("evaluate supports plain-text prompts (apply the chat template first)")
    prompts = [r["prompt"] for r in dataset]
    answers = [str(r["answer"]) for r in dataset]
    if not prompts:
        raise ValueError("the evaluation dataset is empty")
    k, gen = config.k, {"max_new_tokens": config.max_new_tokens, "batch_size": config.batch_size}
    step = progress or (lambda stage: None)
    completions: dict[str, list[list[str]]] = {}

    step("greedy")
    completions["greedy"] = [[t] for t in generate_rows(model, tokenizer, prompts, **gen)]
    step("samples")
    rows = [p for p in prompts for _ in range(k)]  # prompt-major: [P * k]
    completions["samples"] = _by_prompt(
        generate_rows(model, tokenizer, rows, temperature=config.temperature, seed=config.seed, **gen), k)
    step("minds")
    population = Population(model, sigma=config.sigma, seed=config.mind_seed)
    ids = [m for _ in prompts for m in range(k)]  # minds 0..k-1 answer every prompt
    completions["minds"] = _by_prompt(
        generate_rows(model, tokenizer, rows, temperature=config.mind_temperature, seed=config.seed + 1,
                      population=population, mind_ids=ids, **gen), k)

    labels = {"greedy": "greedy (mean model)", "samples": f"samples (T={config.temperature:g})",
             "minds": f"minds (sigma={config.sigma:g}, " + (
                 "greedy)" if config.mind_temperature == 0 else f"T={config.mind_temperature:g})")}
    scored = [score_draws(name, labels[name], completions[name], answers, 1 if name == "greedy" else k)
              for name in ("greedy", "samples", "minds")]
    return EvalResult(n_prompts=len(prompts), config=config, rows=scored, completions=completions)
