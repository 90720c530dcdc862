"""Built-in table of GPU node-pool instance types, the GPUs in them, and their prices.

It lets users name an instance type and nothing else: `gpusPerNode` and the pod sizes the
operator requests come from here, and `kubetune plan` reads the GPU facts and prices. Figures
are the cloud provider's published shapes; the allocatable share the operator requests is
derived from them (see `builders.rayjob.pod_resources`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    """What the planner needs to know about one GPU model.

    usable_gib: the total nvidia-smi reports (the board's memory less what the driver keeps),
    before the CUDA context; bf16_tflops: dense tensor-core peak (no sparsity) from NVIDIA's
    datasheets (A10G: AWS's variant of the A10, 70 TFLOPS as published for G5; V100 has no
    bf16, its fp16 peak is listed); memory_gbps: HBM/GDDR bandwidth (decode speed).
    """

    name: str
    usable_gib: float
    bf16_tflops: float
    memory_gbps: float
    bf16: bool = True


GPUS: dict[str, Gpu] = {
    gpu.name: gpu
    for gpu in (
        Gpu("A10G", 22.49, 70, 600),
        Gpu("L4", 22.49, 121, 300),
        Gpu("V100", 15.78, 125, 900, bf16=False),
        Gpu("A100-40GB", 39.5, 312, 1555),
        Gpu("A100-80GB", 79.2, 312, 2039),
        Gpu("H100", 79.6, 989, 3350),
        Gpu("H200", 140.4, 989, 4800),
    )
}


@dataclass(frozen=True)
class InstanceType:
    name: str
    gpus: int
    gpu_type: str
    gpu_memory_gib: int
    vcpus: int
    memory_gib: int

    @property
    def gpu(self) -> Gpu:
        return GPUS[self.gpu_type]

    @property
    def price_per_hour(self) -> float | None:
        return PRICES_PER_HOUR.get(self.name)


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
    **_family("A100-40GB", 40, {"p4d.24xlarge": (8, 96, 1152)}),
    **_family("A100-80GB", 80, {"p4de.24xlarge": (8, 96, 1152)}),
    **_family("H100", 80, {"p5.48xlarge": (8, 192, 2048)}),
    **_family("H200", 141, {"p5e.48xlarge": (8, 192, 2048), "p5en.48xlarge": (8, 192, 2048)}),
}


# On-demand Linux list prices in USD per instance-hour, AWS us-east-1, as published in June 2026
# (G5, G6 and P3 unchanged since launch). Types without a price here (P4, P5: their prices
# changed more than once since 2025) plan without a cost unless `kubetune plan --price` gives one.
PRICES_AS_OF = "2026-06"
PRICES_REGION = "us-east-1"
PRICES_PER_HOUR: dict[str, float] = {
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g5.4xlarge": 1.624,
    "g5.8xlarge": 2.448,
    "g5.16xlarge": 4.096,
    "g5.12xlarge": 5.672,
    "g5.24xlarge": 8.144,
    "g5.48xlarge": 16.288,
    "g6.xlarge": 0.8048,
    "g6.2xlarge": 0.9776,
    "g6.4xlarge": 1.3232,
    "g6.8xlarge": 2.0144,
    "g6.16xlarge": 3.3968,
    "g6.12xlarge": 4.6016,
    "g6.24xlarge": 6.6752,
    "g6.48xlarge": 13.3504,
    "p3.2xlarge": 3.06,
    "p3.8xlarge": 12.24,
    "p3.16xlarge": 24.48,
}


def lookup_instance_type(name: str) -> InstanceType | None:
    return INSTANCE_TYPES.get(name)
