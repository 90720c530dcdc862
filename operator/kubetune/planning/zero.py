"""DeepSpeed's closed-form ZeRO memory estimates, restated without DeepSpeed.

The same formulas as `deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs` and
`stage_1_and_2.estimate_zero2_model_states_mem_needs` (DeepSpeed 0.19.8; a trainer-tier test
checks they agree for the Llama-2 shapes): bytes of model states (16-bit parameters and
gradients, fp32 master weights, Adam's two moments) per GPU and per node's CPU memory, with
DeepSpeed's 1.5x buffer on the host side. Activations and buffers are not in them.
"""

from __future__ import annotations

from typing import NamedTuple

HOST_BUFFER_FACTOR = 1.5  # DeepSpeed's additional_buffer_factor default


class ModelStates(NamedTuple):
    host_per_node: int
    gpu_per_device: int


def zero3_model_states(
    total_params: int,
    largest_layer_params: int,
    gpus_per_node: int,
    nodes: int,
    offload_optimizer: bool,
    offload_parameters: bool,
    zero_init: bool = True,
) -> ModelStates:
    total_gpus = nodes * gpus_per_node
    gpus_factor = 1 / nodes
    largest_layer_memory = 4 * largest_layer_params
    if offload_optimizer:
        if offload_parameters:
            gpu = largest_layer_memory
            per_param = 18 * gpus_factor if zero_init else max(4 * gpus_per_node, 18 * gpus_factor)
        else:
            gpu = largest_layer_memory + int(2 * total_params / total_gpus)
            per_param = 16 * gpus_factor if zero_init else max(4 * gpus_per_node, 16 * gpus_factor)
        host = total_params * per_param * HOST_BUFFER_FACTOR
    else:
        gpu = largest_layer_memory + int(18 * total_params / total_gpus)
        kept = largest_layer_params if zero_init else total_params
        host = kept * 4 * gpus_per_node * HOST_BUFFER_FACTOR
    return ModelStates(int(host), int(gpu))


def zero2_model_states(
    total_params: int, gpus_per_node: int, nodes: int, offload_optimizer: bool
) -> ModelStates:
    total_gpus = nodes * gpus_per_node
    if offload_optimizer:
        gpu = 2 * total_params
        host = total_params * max(4 * total_gpus, 16) * HOST_BUFFER_FACTOR
    else:
        gpu = 2 * total_params + int(18 * total_params / total_gpus)
        host = total_params * 4 * gpus_per_node * HOST_BUFFER_FACTOR
    return ModelStates(int(host), int(gpu))
