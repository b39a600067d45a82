"""One evaluation path: greedy vs temperature samples vs minds (vs ensemble members).

- :mod:`.generation`: prompts tokenised exactly as TRL's GRPOTrainer tokenises them, one
  generation routine for every condition, sampling in a forked, explicitly seeded RNG.
- :mod:`.scoring`: the one scorer (``####`` answers, pass@k, majority@k, unique answers, diversity).
- :mod:`.core`: :func:`evaluate` (``manyminds eval``, ``manyminds demo``, the evidence scripts).
- :mod:`.ensemble`: :func:`evaluate_ensemble` (``manyminds uncertainty``).
- :mod:`.intervals`: Wilson / bootstrap intervals of every condition and paired tests (exact McNemar,
  paired bootstrap) against greedy and temperature sampling; :mod:`.stats` the formulas.
- :mod:`.seeds`: :func:`evaluate_seeds` (``--seeds N``: new minds and sampling seeds per run).
- :mod:`.report`: 80-column tables, ``results.jsonl`` (one row per prompt and seed), plots.
"""

from .core import EvalConfig, EvalResult, build_records, condition_plan, evaluate, read_prompts
from .generation import generate_completions, tokenize_prompts
from .scoring import ConditionScores, score_condition

__all__ = [
    "ConditionScores",
    "EvalConfig",
    "EvalResult",
    "build_records",
    "condition_plan",
    "evaluate",
    "generate_completions",
    "read_prompts",
    "score_condition",
    "tokenize_prompts",
]
