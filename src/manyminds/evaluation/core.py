"""Greedy vs temperature samples vs minds on a verifiable dataset: the one evaluation loop.

Conditions, in order (each answers every prompt; all share :func:`generate_completions` and
:func:`score_condition`):

- ``greedy``: the mean (noise-free) model, greedy, one draw (with ``greedy=True``);
- ``temperature T`` for ``temperature`` and each further value in ``temperatures`` (a sweep):
  ``k`` samples of the mean model at ``T``;
- ``minds sigma=s`` for each ``s`` in ``sigmas``: minds ``0..k-1`` of a
  :class:`~manyminds.population.Population` (seed ``mind_seed``), each greedy or sampling at
  ``mind_temperature``.

Rows are prompt-major (``[P * k]``: prompt ``p``'s draws are rows ``p*k .. p*k+k-1``) and every
condition's sampling starts from ``torch.manual_seed(seed)`` in a forked RNG, so
``manyminds eval``, ``manyminds demo`` and the evidence scripts give the same numbers for the
same model, problems and settings. Completions are read by a :class:`~.readers.Reader`: the
``####`` line, or (datasets with an ``accepted`` column, such as ``facts``) a free-form short answer.

    >>> result = evaluate(model, tokenizer, load_task("arith", split="test", n=100), EvalConfig(k=8))
    >>> result.conditions[0].pass_at_1, result.records()[0]["conditions"]["greedy"]["answers"]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from manyminds.rows import group_rows, prompt_grid

from .scoring import ConditionScores, score_condition

__all__ = ["EvalConfig", "EvalResult", "condition_plan", "evaluate"]


@dataclass
class EvalConfig:
    """Settings of :func:`evaluate`."""

    k: int = field(default=8, metadata={"help": "samples / minds per prompt (pass@k, majority@k)"})
    sigmas: Sequence[float] = field(default=(0.02,), metadata={"help": "noise scale(s) of the minds; one "
                                                                       "condition per value"})
    mind_seed: int = field(default=0, metadata={"help": "population seed of the minds"})
    temperature: float = field(default=1.0, metadata={"help": "temperature of the mean model's samples"})
    temperatures: Sequence[float] = field(default=(), metadata={"help": "further sampling temperatures (a "
                                                                          "sweep beside the sigma sweep)"})
    mind_temperature: float = field(default=0.0, metadata={"help": "temperature of each mind (0 = greedy)"})
    max_new_tokens: int = field(default=48, metadata={"help": "completion length limit in tokens"})
    batch_size: int = field(default=64, metadata={"help": "generated rows per generate call"})
    seed: int = field(default=0, metadata={"help": "sampling seed (a forked RNG; the global RNG is untouched)"})
    greedy: bool = field(default=True, metadata={"help": "include the greedy mean-model condition"})
    semantic: bool = field(default=False, metadata={"help": "semantic diversity (all-MiniLM-L6-v2, "
                                                            "the diversity extra)"})
    reader: str = field(default="auto", metadata={"help": "how completions are read: final ('####' line), "
                                                          "short (free-form short answer) or auto (short "
                                                          "when the data has an 'accepted' column)"})

    def __post_init__(self):
        if isinstance(self.sigmas, (int, float)):
            self.sigmas = (self.sigmas,)
        self.sigmas = tuple(float(s) for s in self.sigmas)
        if isinstance(self.temperatures, (int, float)):
            self.temperatures = (self.temperatures,)
        self.temperatures = tuple(float(t) for t in self.temperatures if float(t) != float(self.temperature))
        if any(not (t > 0 and math.isfinite(t)) for t in self.temperatures):
            raise ValueError(f"temperatures must be finite and > 0 for sampling, got {list(self.temperatures)}")
        if self.reader not in ("auto", "final", "short"):
            raise ValueError(f"reader must be auto, final or short, got {self.reader!r}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if any(not (s >= 0 and math.isfinite(s)) for s in self.sigmas):
            raise ValueError(f"sigma must be finite and >= 0, got {list(self.sigmas)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")
        if self.mind_temperature < 0:
            raise ValueError(f"mind_temperature must be >= 0 (0 = greedy), got {self.mind_temperature}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")


def condition_plan(config: EvalConfig) -> list[dict]:
    """The conditions :func:`evaluate` runs: name, kind, sigma, temperature and draws per prompt."""
    plan = []
    if config.greedy:
        plan.append({"name": "greedy", "kind": "greedy", "sigma": 0.0, "temperature": 0.0, "k": 1})
    for t in dict.fromkeys((config.temperature, *config.temperatures)):
        plan.append({"name": f"temperature {t:g}", "kind": "samples", "sigma": 0.0, "temperature": t,
                     "k": config.k})
    suffix = f" T={config.mind_temperature:g}" if config.mind_temperature > 0 else ""
    for s in config.sigmas:
        plan.append({"name": f"minds sigma={s:g}{suffix}", "kind": "minds", "sigma": s,
                     "temperature": config.mind_temperature, "k": config.k})
    return plan


@dataclass
class EvalResult:
    """Scores of every condition, the settings, and the prompts and gold answers."""

    config: EvalConfig
    conditions: list[ConditionScores]
    prompts: list = field(default_factory=list, repr=False)
    answers: list | None = field(default=None, repr=False)

    @property
    def n_prompts(self) -> int:
        return len(self.prompts)

    def __getitem__(self, name: str) -> ConditionScores:
        for c in self.conditions:
            if c.name == name or c.kind == name:
                return c
        raise KeyError(f"no condition {name!r}; conditions: {', '.join(c.name for c in self.conditions)}")

    def to_dict(self) -> dict:
        """JSON-ready: settings and one entry per condition (no per-prompt draws)."""
        return {"n_prompts": self.n_prompts, "config": asdict(self.config) | {
                    "sigmas": list(self.config.sigmas), "temperatures": list(self.config.temperatures)},
                "conditions": [c.to_dict() for c in self.conditions]}

    def records(self) -> list[dict]:
        """One dict per prompt: prompt, gold answer, and per condition the completions, final
        answers, votes, majority, agreement and correctness (what ``results.jsonl`` holds)."""
        return build_records(self.prompts, self.answers, self.conditions)


def build_records(prompts: Sequence, answers: Sequence | None, conditions: Sequence[ConditionScores],
                  extra: Sequence[dict] | None = None) -> list[dict]:
    """Per-prompt rows from the conditions' ``per_prompt`` lists (``extra[p]`` is merged in)."""
    rows = []
    for p, prompt in enumerate(prompts):
        row = {"index": p, "prompt": prompt, "answer": None if answers is None else answers[p]}
        if extra is not None:
            row.update(extra[p])
        row["conditions"] = {c.name: {"kind": c.kind, **c.per_prompt[p]} for c in conditions}
        rows.append(row)
    return rows


def read_prompts(dataset) -> tuple[list, list[str] | None]:
    """``prompt`` (text or conversation) and ``answer`` (if present) columns of a dataset or list of dicts
    (``answer`` is the reference of the final reader; see :func:`read_references` for the others)."""
    columns = getattr(dataset, "column_names", None) or (list(dataset[0]) if len(dataset) else [])
    if "prompt" not in columns:
        raise ValueError(f"the evaluation dataset needs a 'prompt' column; it has: {', '.join(columns) or 'none'}")
    prompts = list(dataset["prompt"]) if hasattr(dataset, "column_names") else [r["prompt"] for r in dataset]
    if not prompts:
        raise ValueError("the evaluation dataset is empty")
    if "answer" not in columns:
        return prompts, None
    answers = list(dataset["answer"]) if hasattr(dataset, "column_names") else [r["answer"] for r in dataset]
    return prompts, [str(a) for a in answers]


def _columns(dataset) -> list[str]:
    return list(getattr(dataset, "column_names", None) or (list(dataset[0]) if len(dataset) else []))


def read_references(dataset, reader) -> list | None:
    """``[P]`` references of ``reader``: the ``answer`` column, or for the short reader the
    ``accepted`` column (lists of accepted answers; ``[answer]`` where it is missing)."""
    if reader.name != "short" or "accepted" not in _columns(dataset):
        return read_prompts(dataset)[1]
    rows = dataset if not hasattr(dataset, "column_names") else dataset.to_list()
    return [list(r["accepted"]) if r.get("accepted") else [str(r["answer"])] for r in rows]


def question_text(prompt) -> str:
    """The last user turn of a conversation, or the text prompt itself (what a reader's key drops)."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1]) if users else ""


def evaluate(model, tokenizer, dataset, config: EvalConfig | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> EvalResult:
    """Run every condition of ``config`` (see the module docstring) and score it.

    Args:
        model: a causal LM (also a ``PeftModel``); the minds hook its norm layers while they answer.
        tokenizer: its tokenizer.
        dataset: ``datasets.Dataset`` or list of dicts with ``prompt`` (text or conversation) and
            ``answer`` columns.
        config: :class:`EvalConfig`.
        progress: ``progress(condition name, rows done, rows total)``, at the start of each
            condition (done = 0) and after each batch.
    """
    from manyminds.population import Population

    from .generation import generate_completions
    from .readers import reader_for

    config = config or EvalConfig()
    prompts, answers = read_prompts(dataset)
    if answers is None:
        raise ValueError("the evaluation dataset needs an 'answer' column (the gold final answer)")
    reader = reader_for(config.reader, _columns(dataset))
    references = read_references(dataset, reader)
    questions = [question_text(p) for p in prompts]
    results = []
    for cond in condition_plan(config):
        k = cond["k"]
        rows, ids = prompt_grid(prompts, k)  # prompt-major: [P * k] rows; minds 0..k-1 answer every prompt
        total, done = len(rows), 0
        if progress:
            progress(cond["name"], 0, total)

        def advance(n, name=cond["name"], total=total):
            nonlocal done
            done += n
            if progress:
                progress(name, done, total)

        gen = {"max_new_tokens": config.max_new_tokens, "batch_size": config.batch_size, "seed": config.seed,
               "temperature": cond["temperature"], "progress": advance}
        start = time.perf_counter()
        if cond["kind"] == "minds":
            population = Population(model, sigma=cond["sigma"], seed=config.mind_seed)
            flat = generate_completions(model, tokenizer, rows, population=population, mind_ids=ids, **gen)
        else:
            flat = generate_completions(model, tokenizer, rows, **gen)
        seconds = time.perf_counter() - start
        grid = group_rows(flat, k)  # [P][k]
        results.append(score_condition(cond["name"], cond["kind"], grid, references, sigma=cond["sigma"],
                                       temperature=cond["temperature"], seconds=seconds,
                                       semantic=config.semantic,
                                       draw_ids=list(range(k)) if cond["kind"] == "minds" else None,
                                       reader=reader, questions=questions))
    return EvalResult(config=config, conditions=results, prompts=prompts, answers=answers)
