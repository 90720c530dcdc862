"""Generation bookkeeping that needs no model."""

from __future__ import annotations

import pytest

from kubetune_trainer.generation import Endings

pytestmark = pytest.mark.unit


def test_generation_endings_count_stops_and_cuts():
    endings = Endings()
    stop, pad = 9, 0
    endings.add([5, 6, stop, pad], [stop], max_new_tokens=4)  # stopped
    endings.add([5, 6, 7, 8], [stop], max_new_tokens=4)  # cut at the limit
    endings.add([5, stop], [stop], max_new_tokens=2)  # stopped on the last allowed token
    endings.add([], [stop], max_new_tokens=4)  # nothing generated: neither
    assert endings.metrics() == {"stop_token_rate": 0.5, "truncated_rate": 0.25}


def test_baseline_prompt_is_plain_text_ending_in_a_blank_line(gsm8k_rows):
    """A base model has never seen <START_Q>...: the few-shot baseline speaks plain text."""
    from kubetune.api.tasks import QA_TOKENS
    from kubetune_trainer.data.presets import PLAIN_STOP, make_preset

    prompt, completion = make_preset("gsm8k").plain(gsm8k_rows[0])
    assert prompt.startswith("Question: ") and prompt.endswith("\nAnswer: ")
    assert completion.endswith("#### 72" + PLAIN_STOP) and PLAIN_STOP not in completion[:-2]
    assert not any(token in prompt + completion for token in QA_TOKENS)


def _model_that_writes(tiny_model_dir, tiny_tokenizer, text: str):
    """The tiny Llama with an output head that always predicts the single token `text`."""
    import torch

    from kubetune_trainer.model import load_model, resize_for_tokenizer

    model = load_model(str(tiny_model_dir))
    resize_for_tokenizer(model, tiny_tokenizer)
    [token] = tiny_tokenizer.encode(text, add_special_tokens=False)
    head = torch.nn.Linear(model.config.hidden_size, len(tiny_tokenizer), bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    head.bias.data[token] = 10.0
    model.lm_head = head
    return model


def test_plain_text_stop_ends_the_baseline_answer(tiny_model_dir, tiny_tokenizer):
    """Stopped at the blank line it writes, not run to maxNewTokens waiting for <END_A>."""
    from kubetune_trainer.data.presets import PLAIN_STOP
    from kubetune_trainer.generation import generate

    model = _model_that_writes(tiny_model_dir, tiny_tokenizer, "\n")
    plain, special = Endings(), Endings()
    kwargs = {"batch_size": 2, "max_new_tokens": 12}
    prompts = ["Question: 2+2?\nAnswer: ", "Question: 3+3?\nAnswer: "]
    out = generate(
        model, tiny_tokenizer, prompts, "<END_A>", stop_text=PLAIN_STOP, endings=plain, **kwargs
    )
    assert out == ["", ""]
    assert plain.metrics() == {"stop_token_rate": 1.0, "truncated_rate": 0.0}
    generate(model, tiny_tokenizer, prompts, "<END_A>", endings=special, **kwargs)
    assert special.metrics() == {"stop_token_rate": 0.0, "truncated_rate": 1.0}


def test_greedy_decoding_ignores_the_checkpoints_generation_config(
    tiny_model_dir, tiny_tokenizer, tmp_path
):
    """A generation_config.json with sampling knobs must not change evaluation's answers."""
    import json
    import shutil

    from kubetune_trainer.generation import generate
    from kubetune_trainer.model import load_model, resize_for_tokenizer

    shutil.copytree(tiny_model_dir, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "generation_config.json").write_text(
        json.dumps(
            {
                "do_sample": True,
                "temperature": 3.0,
                "repetition_penalty": 50.0,
                "no_repeat_ngram_size": 1,
                "max_new_tokens": 2,
            }
        )
    )
    answers = []
    for folder in (tiny_model_dir, tmp_path / "ckpt"):
        model = load_model(str(folder))
        resize_for_tokenizer(model, tiny_tokenizer)
        answers.append(
            generate(
                model,
                tiny_tokenizer,
                ["<START_Q>How many legs has a cat?<END_Q><START_A>"] * 2,
                "<END_A>",
                batch_size=2,
                max_new_tokens=16,
            )
        )
    assert answers[0] == answers[1]
    assert len(answers[0][0]) > 0 and answers[0][0] == answers[0][1]


def test_vllm_is_chosen_only_with_a_gpu_vllm_installed_and_no_new_tokens(monkeypatch):
    """This machine has neither, so every CPU test runs transformers; the GPU path picks vLLM
    for a fine-tuned checkpoint and keeps transformers where embeddings must grow."""
    import importlib.util

    import torch

    from kubetune_trainer import generation
    from kubetune_trainer.generation import GenerationOptions, backend_for

    tuned = GenerationOptions("<END_A>", batch_size=2, max_new_tokens=4)
    baseline = GenerationOptions("<END_A>", 2, 4, special_tokens=("<END_A>",))
    assert backend_for(tuned) == "transformers"  # no GPU here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        generation.importlib.util,
        "find_spec",
        lambda name: object() if name == "vllm" else real_find_spec(name),
    )
    assert backend_for(tuned) == "vllm"
    assert backend_for(baseline) == "transformers"
    monkeypatch.setattr(generation.importlib.util, "find_spec", lambda name: None)
    assert backend_for(tuned) == "transformers"
