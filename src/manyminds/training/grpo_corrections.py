"""The population's corrections of a GRPO batch sampled by minds (a mixin of
:class:`~manyminds.training.grpo.PopulationGRPOTrainer`).

:meth:`MindCorrections._mind_corrections` makes the update the same on every engine, applies the
optional truncated importance ratio ``min(p_mean / p_mind, c)`` per token and logs KL(mind || mean)
of the rollouts. It runs on the trainer (``self`` is a ``PopulationGRPOTrainer``): it uses its
``args``, ``accelerator``, ``population``, ``_metrics`` and its log-prob pass
``_get_per_token_logps_and_entropies`` under ``_logps_under(ids)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from trl.models.utils import disable_gradient_checkpointing

from manyminds.rl.functional import mind_log_weights, truncated_importance_ratio

__all__ = ["MindCorrections"]


class MindCorrections:
    """Mixin: the population's corrections and KL metrics of a rollout batch (see the module docstring)."""

    def _completion_logps(self, output: dict[str, Any], mind_ids: torch.Tensor | None) -> torch.Tensor:
        """No-grad log-probs ``[B, C]`` of the batch's completion tokens, row ``b`` under ``mind_ids[b]``
        (``None``: the mean model), chunked as TRL chunks its own passes."""
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)  # [B, P+C]
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        logits_to_keep = output["completion_ids"].size(1)
        mode = "train" if self.model.training else "eval"
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        with (torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
              self._logps_under(mind_ids)):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size)
        return logps

    def _old_logps_needed(self) -> bool:
        """TRL's rule without its vLLM clause: the update needs ``old_per_token_logps`` only when generation
        and optimisation steps are misaligned (several iterations per generation, or a split buffer)."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0

    def _mind_corrections(self, output: dict[str, Any]) -> None:
        """The same update on every engine, for a batch whose rows were sampled by minds.

        - vLLM: TRL's ``old_per_token_logps`` were taken under the rollouts' minds (so TRL's engine
          correction compares like with like). With ``mind_logprobs="mean"`` the update's old log-probs
          are the mean model's, as on transformers: replaced by the mean model's where TRL's own rule needs
          them, else dropped (the loss then uses the current log-probs, detached, as on transformers).
        - ``mind_importance_correction=c``: the advantages ``[B] -> [B, T]`` are weighted per token by
          ``min(p_mean / p_mind, c)`` (trainer log-probs of both models).
        - metrics (``mind_kl_metrics``): mean per-token KL(mind || mean), share of rollouts with sequence
          weight ``p_mean / p_mind < 0.1``, share masked by TRL's engine correction.
        """
        ids = output["mind_ids"]
        mean_mode = self.args.mind_logprobs == "mean"
        old = output.get("old_per_token_logps")
        mind_logps = mean_logps = None
        if old is not None:  # TRL's old pass: under minds on vLLM or with mind_logprobs="mind", else the mean
            if self._engine_correction() or not mean_mode:
                mind_logps = old
            else:
                mean_logps = old
        if self._engine_correction() and mean_mode:
            output.pop("old_per_token_logps", None)
        need_mean = self.args.mind_importance_correction is not None or self.args.mind_kl_metrics or (
            self._engine_correction() and mean_mode and self._old_logps_needed())
        need_mind = self.args.mind_importance_correction is not None or self.args.mind_kl_metrics
        if need_mean and mean_logps is None:
            mean_logps = self._completion_logps(output, None)
        if need_mind and mind_logps is None:
            mind_logps = self._completion_logps(output, ids)
        if self._engine_correction() and mean_mode and self._old_logps_needed():
            output["old_per_token_logps"] = mean_logps
        mask = output["completion_mask"]
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        if self.args.mind_importance_correction is not None:
            ratio = truncated_importance_ratio(mean_logps, mind_logps, mask, self.args.mind_importance_correction)
            advantages = output["advantages"]
            output["advantages"] = (advantages.unsqueeze(1) if advantages.dim() == 1 else advantages) * ratio
            valid = mask.bool()
            gathered = self.accelerator.gather(ratio[valid])
            delta = self.accelerator.gather((mean_logps - mind_logps).abs()[valid])
            if gathered.numel():
                metrics["minds/importance_ratio/mean"].append(gathered.mean().item())
                metrics["minds/importance_ratio/min"].append(gathered.min().item())
                metrics["minds/logp_difference/mean"].append(delta.mean().item())
        if self.args.mind_kl_metrics:
            rows = ids != -1
            diff = torch.where(mask.bool() & rows[:, None], (mind_logps - mean_logps).detach(),
                               torch.zeros_like(mind_logps))
            tokens = self.accelerator.gather((mask.bool() & rows[:, None]).sum().float().reshape(1)).sum()
            kl = (self.accelerator.gather(diff.sum().double().reshape(1)).sum() / tokens.clamp(min=1)).item()
            # gathered at the same shape [B] on every process (variable-length gathers would hang), then filtered
            log_w = self.accelerator.gather(mind_log_weights(mean_logps, mind_logps, mask))
            log_w = log_w[self.accelerator.gather(rows)]
            metrics["minds/kl_mind_mean"].append(kl)
            metrics["minds/frac_weight_below_0.1"].append((log_w < math.log(0.1)).float().mean().item()
                                                          if log_w.numel() else float("nan"))
            metrics["minds/sigma"].append(float(self.population.base_sigma or 0.0))
            if mode == "train":
                self._last_kl = kl
        if self._engine_correction() and self.args.mind_kl_metrics:
            is_ratio = output["importance_sampling_ratio"]  # [B, 1] (sequence modes) or [B, T]
            if is_ratio.size(1) == 1:
                masked = is_ratio[:, 0] == 0
            else:  # token modes: a rollout is masked when every completion token is
                masked = ((is_ratio == 0) | ~mask.bool()).all(dim=1) & mask.bool().any(dim=1)
            metrics["minds/frac_masked"].append(self.accelerator.gather(masked.float()).mean().item())
