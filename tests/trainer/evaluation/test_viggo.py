"""ViGGO meaning representations: parser, per-example scores, aggregate, real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_trainer.evaluation import InvalidReference, clean_output
from kubetune_trainer.evaluation.viggo import (
    CANONICAL_ATTRIBUTE_ORDER,
    MRSyntaxError,
    aggregate,
    breaks_precedence,
    extract_mr,
    parse_mr,
    score_example,
)

pytestmark = pytest.mark.unit

DATASETS = Path(__file__).resolve().parents[3].parent / "shared" / "datasets"
DIRT = (
    "inform(name[Dirt: Showdown], release_year[2012], esrb[E 10+ (for Everyone 10 and Older)],"
    " genres[driving/racing, sport], has_mac_release[no])"
)


# ----------------------------------------------------------------------------- parser


def test_parses_values_with_commas_colons_slashes_and_parentheses():
    mr = parse_mr(DIRT)
    assert mr.function == "inform"
    assert mr.attributes == (
        ("name", "Dirt: Showdown"),
        ("release_year", "2012"),
        ("esrb", "E 10+ (for Everyone 10 and Older)"),
        ("genres", "driving/racing, sport"),
        ("has_mac_release", "no"),
    )


def test_parses_an_empty_value():
    mr = parse_mr("request_attribute(has_mac_release[])")
    assert mr.attributes == (("has_mac_release", ""),)


def test_parses_a_function_without_attributes():
    assert parse_mr("inform()").attributes == ()


def test_whitespace_inside_and_around_is_normalised():
    mr = parse_mr("  inform ( name [ Dirt:  Showdown ] ,genres[driving/racing,sport]  )  ")
    assert mr.attributes == (("name", "Dirt: Showdown"), ("genres", "driving/racing, sport"))


def test_nested_brackets_stay_inside_the_value():
    assert parse_mr("inform(name[Game [Remastered]])").attributes == (
        ("name", "Game [Remastered]"),
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "inform",
        "inform(name[Dirt]",
        "inform(name[Dirt)",
        "inform(name Dirt)",
        "inform(name[Dirt] rating[good])",
        "inform(name[a], name[b])",
        "inform(name[Dirt]) trailing words",
        "(name[Dirt])",
    ],
)
def test_reference_parser_rejects_malformed_text(text):
    with pytest.raises(MRSyntaxError):
        parse_mr(text)


def test_prediction_parser_skips_chatter_and_flags_it():
    parsed = extract_mr("Sure! Here it is: inform(name[Tetris], rating[good])\nHope it helps")
    assert parsed is not None
    assert parsed.mr.function == "inform"
    assert parsed.extra_text


def test_prediction_parser_keeps_the_first_mr_of_a_runaway_generation():
    parsed = extract_mr("inform(name[Tetris])\ninform(name[Doom])")
    assert parsed is not None and parsed.mr.attributes == (("name", "Tetris"),)
    assert parsed.extra_text


def test_prediction_parser_finds_the_mr_after_a_broken_prefix():
    parsed = extract_mr("inform(name[oops give_opinion(name[Doom], rating[poor])")
    assert parsed is not None
    assert parsed.mr.function == "give_opinion"


def test_prediction_parser_returns_none_when_nothing_parses():
    assert extract_mr("I do not know") is None
    assert extract_mr("inform(name[unterminated") is None


@pytest.mark.parametrize(
    "raw",
    [
        "inform(name[Tetris])</s>",
        "<s> inform(name[Tetris])</s><pad><pad>",
        "inform(name[Tetris])<|endoftext|>inform(name[Doom])",
        "inform(name[Tetris])<|eot_id|>",
        "inform(name[Tetris])<|im_end|>\n<|im_start|>user",
        "\n\n  inform(name[Tetris])  \n",
        "</s>inform(name[Tetris])",
    ],
)
def test_special_tokens_and_stop_tokens_are_cleaned(raw):
    parsed = extract_mr(raw)
    assert parsed is not None
    assert parsed.mr.attributes == (("name", "Tetris"),)
    assert not parsed.extra_text


def test_clean_output_cuts_at_the_first_end_token():
    assert clean_output("a</s>b") == "a"
    assert clean_output("<pad>a<unk>b") == "ab"
    assert clean_output("   ") == ""


# ----------------------------------------------------------------------------- scores


def flags(prediction, reference=DIRT):
    result = score_example(prediction, reference)
    keys = ("function_correct", "attributes_correct", "attributes_order_correct", "exact_match")
    return tuple(result[key] for key in keys)


def test_identical_mr_is_right_on_all_four():
    assert flags(DIRT) == (True, True, True, True)


def test_whitespace_differences_do_not_matter():
    spaced = DIRT.replace("driving/racing, sport", "driving/racing ,  sport").replace(", ", ",")
    assert flags(spaced) == (True, True, True, True)


def test_wrong_value_only_breaks_exact_match():
    assert flags(DIRT.replace("[2012]", "[2013]")) == (True, True, True, False)


def test_value_case_matters_for_exact_match():
    assert flags(DIRT.replace("[no]", "[No]")) == (True, True, True, False)


def test_swapped_attributes_keep_the_set_but_not_the_order():
    swapped = (
        "inform(release_year[2012], name[Dirt: Showdown], esrb[E 10+ (for Everyone 10 and"
        " Older)], genres[driving/racing, sport], has_mac_release[no])"
    )
    assert flags(swapped) == (True, True, False, False)


def test_missing_attribute_breaks_set_order_and_exact():
    missing = DIRT.replace(", has_mac_release[no]", "")
    assert flags(missing) == (True, False, False, False)


def test_extra_attribute_breaks_set_order_and_exact():
    extra = DIRT[:-1] + ", rating[good])"
    assert flags(extra) == (True, False, False, False)


def test_wrong_function_is_wrong_on_all_four_even_with_identical_slots():
    assert flags(DIRT.replace("inform(", "give_opinion(")) == (False, False, False, False)


def test_unparseable_prediction_is_wrong_on_all_four_and_flagged():
    result = score_example("inform(name[Dirt: Showdown", DIRT)
    assert not result["parseable"]
    assert flags("inform(name[Dirt: Showdown") == (False, False, False, False)


def test_empty_value_must_stay_empty():
    reference = "request_attribute(has_mac_release[])"
    assert flags("request_attribute(has_mac_release[])", reference) == (True, True, True, True)
    assert flags("request_attribute(has_mac_release[no])", reference) == (True, True, True, False)


def test_invalid_reference_raises():
    with pytest.raises(InvalidReference):
        score_example(DIRT, "not an mr")


# ----------------------------------------------------------------------------- precedence


def test_canonical_order_is_respected_by_the_reference():
    assert not breaks_precedence(parse_mr(DIRT).names)


def test_out_of_order_prediction_breaks_precedence():
    assert breaks_precedence(["rating", "name"])
    assert score_example("inform(rating[good], name[Doom])", DIRT)["breaks_precedence"]


def test_unknown_attributes_do_not_count_for_precedence():
    assert not breaks_precedence(["name", "made_up", "rating"])


def test_aggregate_fractions_and_precedence_rate_over_parseable_only():
    details = [
        score_example(DIRT, DIRT),
        score_example(DIRT.replace("[2012]", "[1999]"), DIRT),
        score_example("inform(has_mac_release[no], name[Dirt: Showdown])", DIRT),
        score_example("garbage", DIRT),
    ]
    metrics = aggregate(details)
    assert metrics["function_accuracy"] == 0.75
    assert metrics["attribute_accuracy"] == 0.5
    assert metrics["attribute_order_accuracy"] == 0.5
    assert metrics["exact_match"] == 0.25
    assert metrics["unparseable_rate"] == 0.25
    assert metrics["precedence_violation_rate"] == pytest.approx(1 / 3)
    assert all(0.0 <= value <= 1.0 for value in metrics.values())


def test_aggregate_of_nothing_is_zero():
    assert set(aggregate([]).values()) == {0.0}


# ----------------------------------------------------------------------------- real data


def dataset_mrs(split):
    path = DATASETS / "viggo" / f"viggo-{split}.jsonl"
    assert path.exists(), f"missing shared dataset {path}"
    return [json.loads(line)["meaning_representation"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize(("split", "count"), [("test", 1083), ("validation", 714)])
def test_every_real_mr_parses_and_scores_perfectly_against_itself(split, count):
    mrs = dataset_mrs(split)
    assert len(mrs) == count
    details = [score_example(mr, mr) for mr in mrs]
    metrics = aggregate(details)
    assert metrics["exact_match"] == 1.0
    assert metrics["function_accuracy"] == 1.0
    assert metrics["attribute_accuracy"] == 1.0
    assert metrics["attribute_order_accuracy"] == 1.0
    assert metrics["unparseable_rate"] == 0.0
    assert metrics["precedence_violation_rate"] == 0.0


def test_canonical_order_covers_every_attribute_of_the_dataset():
    names = {
        name
        for split in ("train", "validation", "test")
        for mr in dataset_mrs(split)
        for name in parse_mr(mr).names
    }
    assert names == set(CANONICAL_ATTRIBUTE_ORDER)
