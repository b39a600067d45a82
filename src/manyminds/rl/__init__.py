"""Population RL math: mind assignment, the label-free (majority-vote) reward, per-group functions.

The trainer lives with the other trainers in :mod:`manyminds.training` (``training/grpo.py``),
which imports this package's math (arrows run one way: training -> rl):

    >>> from manyminds.training import PopulationGRPOConfig, PopulationGRPOTrainer
    >>> from manyminds.rewards import answer_reward
    >>> args = PopulationGRPOConfig("out", mind_sigma=0.02, num_generations=8, max_completion_length=32)
    >>> PopulationGRPOTrainer(model, reward_funcs=answer_reward, args=args, train_dataset=ds,
    ...                       processing_class=tokenizer).train()

Tested with TRL 1.16 (``manyminds.training.grpo.TESTED_TRL``).
"""

from manyminds.rl.assignment import assign_minds
from manyminds.rl.label_free import majority_agreement, majority_vote_reward

__all__ = ["assign_minds", "majority_agreement", "majority_vote_reward"]

