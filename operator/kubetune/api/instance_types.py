"""Built-in table of GPU node-pool instance types.

It lets users name an instance type and nothing else: `gpusPerNode` and the pod sizes the
operator requests come from here. Figures are the cloud provider's published shapes; the
allocatable share the operator requests is derived from them (see `allocatable`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceType:
    name: str
    gpus: int
    gpu_type: str
    gpu_memory_gib: int
    vcpus: int
    memory_gib: int


def _family(
    gpu_type: str, gpu_memory_gib: int, shapes: dict[str, tuple[int, int, int]]
) -> dict[str, InstanceType]:
    return {
        name: InstanceType(name, gpus, gpu_type, gpu_memory_gib, vcpus, memory)
        for name, (gpus, vcpus, memory) in shapes.items()
    }


INSTANCE_TYPES: dict[str, InstanceType] = {
    # AWS G5: NVIDIA A10G 24 GB (the case study's g5.48xlarge is the last one).
    **_family(
        "A10G",
        24,
        {
            "g5.xlarge": (1, 4, 16),
            "g5.2xlarge": (1, 8, 32),
            "g5.4xlarge": (1, 16, 64),
            "g5.8xlarge": (1, 32, 128),
            "g5.16xlarge": (1, 64, 256),
            "g5.12xlarge": (4, 48, 192),
            "g5.24xlarge": (4, 96, 384),
            "g5.48xlarge": (8, 192, 768),
        },
    ),
    # AWS G6: NVIDIA L4 24 GB.
    **_family(
        "L4",
        24,
        {
            "g6.xlarge": (1, 4, 16),
            "g6.2xlarge": (1, 8, 32),
            "g6.4xlarge": (1, 16, 64),
            "g6.8xlarge": (1, 32, 128),
            "g6.16xlarge": (1, 64, 256),
            "g6.12xlarge": (4, 48, 192),
            "g6.24xlarge": (4, 96, 384),
            "g6.48xlarge": (8, 192, 768),
        },
    ),
    **_family(
        "V100",
        16,
        {"p3.2xlarge": (1, 8, 61), "p3.8xlarge": (4, 32, 244), "p3.16xlarge": (8, 64, 488)},
    ),
    **_family("A100", 40, {"p4d.24xlarge": (8, 96, 1152)}),
    **_family("A100", 80, {"p4de.24xlarge": (8, 96, 1152)}),
    **_family("H100", 80, {"p5.48xlarge": (8, 192, 2048)}),
    **_family("H200", 141, {"p5e.48xlarge": (8, 192, 2048), "p5en.48xlarge": (8, 192, 2048)}),
}


def lookup_instance_type(name: str) -> InstanceType | None:
    return INSTANCE_TYPES.get(name)
