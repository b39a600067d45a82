"""The trainers, side by side: thin subclasses of transformers' ``Trainer`` and TRL's ``GRPOTrainer``.

- :class:`RenyiSFTTrainer` / :class:`RenyiSFTConfig`: alpha-Renyi SFT of a K-member LoRA ensemble.
- :class:`RenyiDPOTrainer` / :class:`RenyiDPOConfig`: alpha-Renyi DPO of the same ensemble.
- :class:`PopulationGRPOTrainer` / :class:`PopulationGRPOConfig`: GRPO with a different mind of a
  population per rollout, and label-free RL by majority vote (the RL math is in :mod:`manyminds.rl`).
- :class:`CriticalAlphaCallback`: logs the critical alpha of members during Renyi training.
"""

from .critical import CriticalAlphaCallback
from .dpo import RenyiDPOConfig, RenyiDPOTrainer
from .grpo import PopulationGRPOTrainer
from .grpo_config import PopulationGRPOConfig
from .sft import RenyiSFTConfig, RenyiSFTTrainer

__all__ = ["CriticalAlphaCallback", "PopulationGRPOConfig", "PopulationGRPOTrainer", "RenyiDPOConfig", "RenyiDPOTrainer",
           "RenyiSFTConfig", "RenyiSFTTrainer"]
