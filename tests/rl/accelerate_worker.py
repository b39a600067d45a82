"""Run by tests/rl/test_accelerate.py under ``accelerate launch --num_processes 2 --cpu``.

Population GRPO with groups that straddle the two processes (4 rollouts per group, 2 per
process), label-free, mind-mode log-probs; every rank writes the mind ids it generated with and
the ones its loss used, plus its final parameters' checksum.
"""

import json
import sys

import torch

from manyminds.charlm import VOCAB_SIZE, build_tokenizer
from manyminds.models import random_model
from manyminds.population import Population
from manyminds.rl import PopulationGRPOConfig, PopulationGRPOTrainer, label_free
from manyminds.tasks import load_task

out = sys.argv[1]
calls = []
original = Population.minds


def minds(self, ids):
    calls.append((torch.as_tensor(ids).tolist(), torch.is_grad_enabled()))
    return original(self, ids)


Population.minds = minds
# A random model never writes "####": take the first character as the final answer so that the
# majority reward (computed over groups gathered from both processes) has a signal.
label_free.extract_answer = lambda text: text[:1] or None
tok = build_tokenizer()
model = random_model("qwen2", vocab_size=VOCAB_SIZE, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id)
args = PopulationGRPOConfig(output_dir=out, per_device_train_batch_size=2, num_generations=4, steps_per_generation=1, max_completion_length=6,
                            max_steps=2, learning_rate=0.1, logging_steps=1, report_to="none", save_strategy="no",
                            use_cpu=True, seed=0, mind_sigma=0.5, label_free=True, mind_logprobs="mind",
                            gradient_checkpointing=False)
trainer = PopulationGRPOTrainer(model, args=args, train_dataset=load_task("arith", n=8), processing_class=tok)
trainer.train()
rank = trainer.accelerator.process_index
checksum = float(sum(p.detach().double().sum() for p in trainer.model.parameters()))
logged = sorted(set().union(*[h.keys() for h in trainer.state.log_history]))
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump({"rank": rank, "world": trainer.accelerator.num_processes, "calls": calls, "checksum": checksum,
               "logged": logged, "history": trainer.state.log_history}, f)
