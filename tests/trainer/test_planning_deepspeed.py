"""The planner's restated ZeRO estimates equal DeepSpeed's own, and its parameter counts equal
transformers' for the same configs (models built on the meta device: no weights, no memory)."""

import pytest

from kubetune.api.models import BUILTIN_MODELS, LLAMA2_CONFIGS, known_config
from kubetune.planning import ModelShape
from kubetune.planning.zero import zero2_model_states, zero3_model_states

pytestmark = pytest.mark.trainer

LAYOUTS = [(8, 1), (8, 2), (8, 4), (1, 1), (4, 1)]  # (GPUs per node, nodes)


def hf_counts(config: dict) -> tuple[int, int]:
    """transformers' parameter count and DeepSpeed's largest layer for a config."""
    import torch
    from deepspeed.runtime.zero.stage3 import model_to_params
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**config))
    # DeepSpeed's total dedupes by data_ptr, which is 0 for every meta tensor: count numels.
    _, largest = model_to_params(model)
    return sum(p.numel() for p in model.parameters()), largest


@pytest.mark.parametrize("name", [*(f"Llama-2-{s}-hf" for s in LLAMA2_CONFIGS), *BUILTIN_MODELS])
def test_parameter_counts_equal_transformers(name):
    config = known_config(name)
    shape = ModelShape.from_config(config)
    assert (shape.parameters, shape.largest_module_params) == hf_counts(config)


@pytest.mark.parametrize("size", list(LLAMA2_CONFIGS))
@pytest.mark.parametrize(("per_node", "nodes"), LAYOUTS)
def test_zero_estimates_equal_deepspeeds(size, per_node, nodes):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    shape = ModelShape.from_config(LLAMA2_CONFIGS[size])
    total, largest = shape.parameters, shape.largest_module_params
    for offload_optimizer, offload_parameters in ((False, False), (True, False), (True, True)):
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total, largest, per_node, nodes, offload_optimizer, offload_parameters
        )
        ours = zero3_model_states(
            total, largest, per_node, nodes, offload_optimizer, offload_parameters
        )
        assert (ours.host_per_node, ours.gpu_per_device) == (cpu, gpu)
    for offload in (False, True):
        cpu, gpu = estimate_zero2_model_states_mem_needs(total, per_node, nodes, offload)
        ours2 = zero2_model_states(total, per_node, nodes, offload)
        assert (ours2.host_per_node, ours2.gpu_per_device) == (cpu, gpu)
