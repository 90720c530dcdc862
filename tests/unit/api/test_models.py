import pytest

from kubetune.api.instance_types import INSTANCE_TYPES
from kubetune.api.v1alpha1 import FineTuneJobSpec, NodePoolSpec, stages_of
from kubetune.validation import SpecError, parse_spec, semantic_problems

pytestmark = pytest.mark.unit

MINIMAL = {
    "model": {"name": "meta-llama/Llama-2-7b-hf"},
    "task": {"preset": "gsm8k"},
    "data": {"train": {"uri": "s3://b/train.jsonl"}, "test": {"uri": "s3://b/test.jsonl"}},
    "output": {"storageURI": "s3://b/out"},
}


def test_defaults_follow_the_case_study():
    spec = parse_spec(MINIMAL)
    training = spec.training
    assert (training.epochs, training.learning_rate, training.batch_size_per_device) == (
        10,
        5e-6,
        16,
    )
    assert (training.context_length, training.precision, training.checkpoints_to_keep) == (
        512,
        "bf16",
        1,
    )
    assert training.deepspeed.enabled and training.deepspeed.stage == 3
    assert training.deepspeed.offload_optimizer and not training.deepspeed.offload_parameters
    assert training.method == "full" and training.packing and not training.loss_on_prompt
    assert spec.evaluation.enabled and not spec.evaluation.baseline
    assert spec.compute.node_pool.instance_type == "g5.48xlarge"


def test_wire_form_is_camel_case_and_round_trips():
    spec = parse_spec(MINIMAL)
    wire = spec.to_wire()
    assert wire["training"]["learningRate"] == 5e-6
    assert wire["output"]["storageURI"] == "s3://b/out"
    assert "learning_rate" not in wire["training"]
    assert FineTuneJobSpec.model_validate(wire) == spec


def test_unknown_fields_are_errors_at_every_depth():
    with pytest.raises(SpecError) as error:
        parse_spec({**MINIMAL, "training": {"epochs": 2, "warmupSteps": 3}})
    assert [p.path for p in error.value.problems] == ["spec.training.warmupSteps"]


def test_every_problem_is_reported_not_just_the_first():
    bad = {**MINIMAL, "training": {"epochs": 0, "learningRate": -1}}
    with pytest.raises(SpecError) as error:
        parse_spec(bad)
    assert {p.path for p in error.value.problems} == {
        "spec.training.epochs",
        "spec.training.learningRate",
    }


@pytest.mark.parametrize(
    ("instance_type", "gpus"),
    [
        ("g5.xlarge", 1),
        ("g5.12xlarge", 4),
        ("g5.48xlarge", 8),
        ("p4d.24xlarge", 8),
        ("p5.48xlarge", 8),
    ],
)
def test_known_instance_types_fill_gpus_per_node(instance_type, gpus):
    assert NodePoolSpec(instance_type=instance_type).effective_gpus_per_node == gpus


def test_unknown_instance_type_needs_gpus_per_node():
    assert NodePoolSpec(instance_type="x9.mega", gpus_per_node=4).effective_gpus_per_node == 4
    with pytest.raises(ValueError, match="gpusPerNode"):
        NodePoolSpec(instance_type="x9.mega")


def test_instance_table_covers_the_documented_types():
    for name in [
        "g5.xlarge",
        "g5.2xlarge",
        "g5.4xlarge",
        "g5.8xlarge",
        "g5.12xlarge",
        "g5.16xlarge",
        "g5.24xlarge",
        "g5.48xlarge",
        "p4d.24xlarge",
        "p5.48xlarge",
    ]:
        known = INSTANCE_TYPES[name]
        assert (
            known.gpus >= 1
            and known.vcpus >= 4
            and known.memory_gib >= 16
            and known.gpu_memory_gib >= 16
        )
    assert INSTANCE_TYPES["g5.48xlarge"].gpu_type == "A10G"


def test_single_stage_job_is_one_stage_named_after_the_preset():
    stages = stages_of(parse_spec(MINIMAL))
    assert [s.name for s in stages] == ["gsm8k"]
    assert stages[0].data.train.uri == "s3://b/train.jsonl"


def test_curriculum_stage_names_must_be_unique():
    stage = {"name": "one", "data": {"train": {"uri": "a.jsonl"}, "test": {"uri": "t.jsonl"}}}
    spec = {**MINIMAL, "stages": [stage, stage]}
    del spec["data"]
    with pytest.raises(SpecError, match="stage names must be unique"):
        parse_spec(spec)


CPU_POOL = {"instanceType": "kubetune-local", "gpusPerNode": 0, "cpu": "500m", "memory": "3Gi"}


def with_compute(**compute):
    return {**MINIMAL, "compute": compute}


def problems(spec):
    with pytest.raises(SpecError) as error:
        parse_spec(spec)
    return [str(p) for p in error.value.problems]


def test_gpus_per_node_zero_is_a_cpu_only_pool():
    pool = parse_spec(with_compute(workers=3, nodePool=CPU_POOL)).compute.node_pool
    assert pool.cpu_only and pool.effective_gpus_per_node == 0
    assert (pool.cpu, pool.memory) == ("500m", "3Gi")
    assert not parse_spec(MINIMAL).compute.node_pool.cpu_only


@pytest.mark.parametrize("missing", ["cpu", "memory"])
def test_cpu_only_pool_needs_cpu_and_memory(missing):
    pool = {k: v for k, v in CPU_POOL.items() if k != missing}
    [problem] = problems(with_compute(nodePool=pool))
    assert problem.startswith(
        f"spec.compute.nodePool.{missing}: gpusPerNode 0 (a CPU-only pool) needs {missing}"
    )


def test_a_gpu_pool_may_give_cpu_and_memory():
    pool = parse_spec(
        with_compute(nodePool={"instanceType": "g5.48xlarge", "cpu": "100"})
    ).compute.node_pool
    assert (pool.cpu, pool.memory, pool.effective_gpus_per_node) == ("100", None, 8)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("gpusPerNode", -1, "greater than or equal to 0"),
        ("cpu", "0", "cpu must be greater than zero"),
        ("cpu", "0.000m", "cpu must be greater than zero"),
        ("cpu", "-1", "must be a Kubernetes quantity"),
        ("memory", "0Gi", "memory must be greater than zero"),
        ("memory", "3 GB", "must be a Kubernetes quantity"),
    ],
)
def test_worker_size_values_are_checked(field, value, message):
    [problem] = problems(with_compute(nodePool={**CPU_POOL, field: value}))
    assert problem.startswith(f"spec.compute.nodePool.{field}:") and message in problem


def test_submitter_size_defaults_to_todays_and_is_checked():
    submitter = parse_spec(MINIMAL).compute.submitter
    assert (submitter.cpu, submitter.memory) == ("500m", "1Gi")
    small = parse_spec(with_compute(submitter={"cpu": "250m", "memory": "512Mi"})).compute.submitter
    assert (small.cpu, small.memory) == ("250m", "512Mi")
    [problem] = problems(with_compute(submitter={"cpu": "0m"}))
    assert problem == "spec.compute.submitter.cpu: cpu must be greater than zero"
    [problem] = problems(with_compute(submitter={"memory": "a lot"}))
    assert problem.startswith("spec.compute.submitter.memory: must be a Kubernetes quantity")


def test_cpu_only_pool_takes_any_number_of_workers():
    spec = parse_spec(with_compute(workers=3, nodePool=CPU_POOL))
    assert [p for p in semantic_problems(spec) if not p.cluster_only] == []
