"""`kubetune plan` against the case study's facts and every example manifest."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubetune.api.models import known_config
from kubetune.commands import plan_job
from kubetune.config import OperatorConfig
from kubetune.planning import build_plan, generation_devices, shape_of
from kubetune.validation import parse_finetunejob

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
KUBETUNE = [sys.executable, "-m", "kubetune.cli"]


def job_from(example: str, **changes):
    doc = yaml.safe_load((EXAMPLES / example).read_text())
    for path, value in changes.items():
        node = doc["spec"]
        *parents, leaf = path.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return parse_finetunejob(doc)


def plan_of(job):
    return build_plan(job.spec, shape_of(job.spec.model.name), OperatorConfig())


@pytest.mark.parametrize(
    ("size", "parameters"),
    [("7b", 6_738_415_616), ("13b", 13_015_864_320), ("70b", 68_976_648_192)],
)
def test_llama2_parameter_counts_match_the_published_checkpoints(size, parameters):
    assert shape_of(f"meta-llama/Llama-2-{size}-hf").parameters == parameters
    assert known_config(f"meta-llama/Llama-2-{size}-chat-hf") == known_config(f"Llama-2-{size}-hf")


@pytest.mark.parametrize(
    ("example", "workers"),
    [("gsm8k-llama2-7b.yaml", 16), ("gsm8k-llama2-13b.yaml", 16), ("gsm8k-llama2-70b.yaml", 32)],
)
def test_case_study_runs_fit_on_their_a10g_nodes(example, workers):
    """7B and 13B: ZeRO-3 with optimizer offload on 16 A10G; 70B on 32 A10G."""
    job = job_from(example)
    assert job.spec.compute.workers == workers
    assert job.spec.compute.node_pool.instance_type == "g5.48xlarge"
    assert job.spec.training.deepspeed.stage == 3 and job.spec.training.deepspeed.offload_optimizer
    plan = plan_of(job)
    assert plan.verdict == "Fits", plan.reason
    assert plan.nodes == workers // 8 and plan.gpus == workers


def test_70b_on_16_a10g_does_not_fit_and_says_why_and_what_would():
    plan = plan_of(job_from("gsm8k-llama2-70b.yaml", compute__workers=16))
    assert plan.verdict == "WillNotFit"
    # Offloaded parameters and optimizer states of 69B parameters over 2 nodes: 18 bytes a
    # parameter / 2 nodes x 1.5 = 866 GiB, more than the 691 GiB a g5.48xlarge pod gets.
    assert "host memory per node" in plan.reason and "691.0 GiB available" in plan.reason
    assert plan.remedy is not None and plan.remedy.startswith("set compute.workers: 32")


def test_full_7b_on_one_gpu_is_refused_with_a_remedy_that_fits():
    job = job_from(
        "gsm8k-llama2-7b.yaml", compute__workers=1, compute__nodePool={"instanceType": "g5.2xlarge"}
    )
    plan = plan_of(job)
    assert plan.verdict == "WillNotFit" and "host memory per node" in plan.reason
    assert plan.remedy and "(binding:" in plan.remedy


def test_13b_evaluation_is_split_over_gpus_where_one_a10g_is_too_small():
    """26 GB of bf16 weights do not fit one 24 GB A10G; they fit one 40 GB A100."""
    a10g = job_from("viggo-llama2-13b.yaml")
    a100 = job_from("viggo-llama2-13b-p4d.yaml")
    shape = shape_of(a10g.spec.model.name)
    assert generation_devices(a10g.spec, shape)["evaluation"] >= 2
    assert generation_devices(a100.spec, shape)["evaluation"] == 1
    assert generation_devices(a10g.spec, None) == {"evaluation": 1, "baseline": 1}


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_plans_as_fitting_evaluation_included(example):
    job = parse_finetunejob(yaml.safe_load(example.read_text()))
    plan = plan_job(job, example.parent)
    assert plan is not None and plan.verdict == "Fits", plan and plan.reason
    phases = {p.name for p in plan.phases}
    assert {"training", "checkpoint"} <= phases
    assert ("evaluation" in phases) == job.spec.evaluation.enabled
    assert ("baseline" in phases) == (job.spec.evaluation.enabled and job.spec.evaluation.baseline)
    assert ("hand-off" in phases) == (job.spec.stages is not None and len(job.spec.stages) > 1)


def test_memory_grows_with_batch_and_shrinks_with_offload_and_checkpointing():
    base = plan_of(job_from("gsm8k-llama2-7b.yaml"))
    bigger = plan_of(job_from("gsm8k-llama2-7b.yaml", training__batchSizePerDevice=32))
    no_gc = plan_of(job_from("gsm8k-llama2-7b.yaml", training__gradientCheckpointing=False))
    no_offload = plan_of(
        job_from(
            "gsm8k-llama2-7b.yaml", training__deepspeed={"stage": 3, "offloadOptimizer": False}
        )
    )
    device = {p.name: p.device.total for p in base.phases}["training"]
    assert {p.name: p.device.total for p in bigger.phases}["training"] > device
    assert {p.name: p.device.total for p in no_gc.phases}["training"] > device
    assert {p.name: p.device.total for p in no_offload.phases}["training"] > device
    assert {p.name: p.host.total for p in no_offload.phases}["training"] < {
        p.name: p.host.total for p in base.phases
    }["training"]


def test_unknown_model_has_no_plan():
    assert shape_of("someone/some-model") is None
    assert build_plan(job_from("gsm8k-llama2-7b.yaml").spec, None, OperatorConfig()) is None


def test_plan_command_json_counts_local_data_for_time_and_cost():
    result = subprocess.run(
        [*KUBETUNE, "plan", "-f", str(EXAMPLES / "quickstart-local.yaml"), "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["verdict"] == "Fits" and plan["name"] == "quickstart-viggo"
    # 5,103 local ViGGO rows: a time, and a cost at the table's g5.48xlarge price.
    assert plan["hours"] > 0 and plan["costUSD"] == pytest.approx(plan["hours"] * 16.288)
    assert "us-east-1" in plan["price"]


def test_plan_command_table_and_exit_code_on_will_not_fit(tmp_path):
    doc = yaml.safe_load((EXAMPLES / "gsm8k-llama2-70b.yaml").read_text())
    doc["spec"]["compute"]["workers"] = 16
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = subprocess.run(
        [*KUBETUNE, "plan", "-f", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "FineTuneJob llama2-70b-gsm8k"
    assert any(
        line.startswith("verdict: WillNotFit — binding: checkpoint: host memory") for line in lines
    )
    assert any(line.startswith("remedy: set compute.workers: 32") for line in lines)
    validate = subprocess.run(
        [*KUBETUNE, "validate", "-f", str(path)], capture_output=True, text=True, check=False
    )
    assert validate.returncode == 1 and "plan: WillNotFit" in validate.stderr
    assert "spec.runPolicy.skipFitCheck: true runs it anyway" in validate.stderr
    doc["spec"].setdefault("runPolicy", {})["skipFitCheck"] = True
    path.write_text(yaml.safe_dump(doc))
    forced = subprocess.run(
        [*KUBETUNE, "validate", "-f", str(path)], capture_output=True, text=True, check=False
    )
    assert forced.returncode == 0 and "plan: WillNotFit" in forced.stdout
