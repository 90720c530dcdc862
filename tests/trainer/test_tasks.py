"""The task registry and its modules agree: every task has a module, formats rows, and its
scorer reports exactly the registry's metrics, headline first."""

from __future__ import annotations

import pytest

from kubetune.api.tasks import TASKS, TaskInfo, task_info, tasks_table
from kubetune.api.v1alpha1 import TaskSpec
from kubetune_trainer.data.presets import make_preset
from kubetune_trainer.evaluation.scoring import score_predictions
from kubetune_trainer.tasks import Task, task

pytestmark = pytest.mark.unit

# One real-looking row per task (the shared datasets' field names), and a right answer.
ROWS = {
    "viggo": {
        "target": "Halo is a great shooter.",
        "meaning_representation": "inform(name[Halo], genres[shooter], rating[excellent])",
    },
    "sql": {
        "context": "CREATE TABLE head (name VARCHAR, age INTEGER)",
        "question": "Who is older than 56?",
        "answer": "SELECT name FROM head WHERE age > 56",
    },
    "gsm8k": {"question": "1 + 1?", "answer": "1 + 1 = 2\n#### 2"},
    "mathqa": {
        "Problem": "2 + 2?",
        "options": "a ) 3 , b ) 4",
        "Rationale": '"2 + 2 = 4"',
        "correct": "b",
    },
    "custom": {"q": "ping", "a": "pong"},
    "chat": {
        "messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "ping"},
            {"role": "assistant", "content": "pong"},
        ]
    },
}


def render(messages, add_generation_prompt):
    """The builtin model's chat template, written out (no tokenizer needed)."""
    text = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
    return text + ("<|assistant|>" if add_generation_prompt else "")


@pytest.mark.parametrize("name", list(TASKS))
def test_every_registry_task_has_a_module_that_formats_and_scores(name):
    assert set(ROWS) == set(TASKS)
    info = TASKS[name]
    assert task(name).info is info
    templates = {"prompt_template": "{q}", "completion_template": "{a}"} if info.templated else {}
    preset = make_preset(name, **templates).with_chat_template(render)
    prompt, completion = preset(ROWS[name])
    assert completion.endswith(info.special_tokens[-1]) and prompt
    answer = completion.removesuffix(info.special_tokens[-1])
    reference = task(name).reference(ROWS[name], answer)
    metrics, details = score_predictions(name, [answer, "nonsense"], [reference, reference])
    assert set(metrics) == set(info.metrics)
    assert metrics[info.headline] == 0.5  # the right answer scores, the wrong one does not
    assert [d["id"] for d in details] == [0, 1]


def test_the_api_takes_exactly_the_registry_tasks():
    for name in TASKS:
        extra = (
            {"promptTemplate": "{q}", "completionTemplate": "{a}"} if TASKS[name].templated else {}
        )
        assert TaskSpec.model_validate({"preset": name, **extra}).preset == name
    with pytest.raises(ValueError, match="preset"):
        TaskSpec.model_validate({"preset": "sqll"})
    with pytest.raises(ValueError, match="known: viggo, sql"):
        task_info("sqll")


def test_a_headline_must_be_one_of_the_metrics_and_the_table_lists_every_task():
    with pytest.raises(ValueError, match="headline"):
        TaskInfo("x", "x", "accuracy", ("exact_match", "accuracy"), ("answer",))
    table = tasks_table()
    assert all(f"| `{name}` |" in table for name in TASKS)


def test_a_task_module_has_a_fields_function_exactly_when_the_task_is_not_templated():
    sql_task = task("sql")
    with pytest.raises(ValueError, match="a qa task has a fields function"):
        Task(TASKS["custom"], sql_task.fields, sql_task.score_example, sql_task.aggregate)
    with pytest.raises(ValueError, match="a qa task has a fields function"):
        Task(TASKS["chat"], sql_task.fields, sql_task.score_example, sql_task.aggregate)
    with pytest.raises(ValueError, match="a qa task has a fields function"):
        Task(TASKS["sql"], None, sql_task.score_example, sql_task.aggregate)


def test_a_mathqa_row_as_distributed_is_its_own_reference():
    """`kubetune eval --task mathqa` takes MathQA rows as they come (Rationale and correct
    letter), without the formatted completion a job adds."""
    row = ROWS["mathqa"]
    metrics, _ = score_predictions("mathqa", ["2 + 2 = 4\nAnswer: b", "Answer: a"], [row, row])
    assert metrics == {"accuracy": 0.5, "exact_match": 0.5}
