"""Population RL: GRPO with a different mind per rollout, and label-free RL by majority vote.

    >>> from manyminds.rl import PopulationGRPOConfig, PopulationGRPOTrainer
    >>> from manyminds.rewards import answer_reward
    >>> args = PopulationGRPOConfig("out", mind_sigma=0.02, num_generations=8, max_completion_length=32)
    >>> PopulationGRPOTrainer(model, reward_funcs=answer_reward, args=args, train_dataset=ds,
    ...                       processing_class=tokenizer).train()

Tested with TRL 1.16 (``manyminds.rl.trainer.TESTED_TRL``).
"""

from manyminds.rl.assignment import assign_minds
from manyminds.rl.config import PopulationGRPOConfig
from manyminds.rl.label_free import majority_agreement, majority_vote_reward
from manyminds.rl.trainer import PopulationGRPOTrainer

__all__ = ["PopulationGRPOConfig", "PopulationGRPOTrainer", "assign_minds", "majority_agreement",
           "majority_vote_reward"]
