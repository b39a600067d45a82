"""Thin transformers ``Trainer`` subclasses for alpha-Renyi ensembles of LoRA members."""

from .dpo import RenyiDPOConfig, RenyiDPOTrainer
from .sft import RenyiSFTConfig, RenyiSFTTrainer

__all__ = ["RenyiDPOConfig", "RenyiDPOTrainer", "RenyiSFTConfig", "RenyiSFTTrainer"]
