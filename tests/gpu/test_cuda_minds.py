"""CPU == CUDA for population minds (run on a GPU machine: ``python -m pytest tests/gpu``).

Skipped where CUDA is not available. Mind ``m`` must be the same mind on every device: the
offsets are drawn on the CPU and moved, so they are bit-identical in float32, and a mind's
logits on CUDA equal its logits on the CPU up to kernel rounding, far below the mind's own effect.
"""

import copy

import pytest
import torch

from manyminds.zoo.models import random_model
from manyminds.population import Population

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma", "gpt2"])
def test_minds_equal_on_cpu_and_cuda(family):
    cpu_model = random_model(family)
    cuda_model = copy.deepcopy(cpu_model).to("cuda")
    cpu_pop, cuda_pop = Population(cpu_model, sigma=0.1, seed=0), Population(cuda_model, sigma=0.1, seed=0)
    for layer in range(cpu_pop.num_layers):
        assert torch.equal(cpu_pop.offsets(3, layer), cuda_pop.offsets(3, layer).cpu())
    ids = torch.randint(3, 64, (4, 12), generator=torch.Generator().manual_seed(0))
    minds = [0, 1, 2, 3]
    with torch.no_grad():
        plain = cpu_model(ids).logits
        with cpu_pop.minds(minds):
            on_cpu = cpu_model(ids).logits
        with cuda_pop.minds(minds):
            on_cuda = cuda_model(ids.cuda()).logits.cpu()
    effect = (on_cpu - plain).abs().max().item()
    device_gap = (on_cpu - on_cuda).abs().max().item()
    assert effect > 1e-2
    assert device_gap < 1e-3 * max(1.0, effect) and device_gap < effect / 50, (device_gap, effect)
