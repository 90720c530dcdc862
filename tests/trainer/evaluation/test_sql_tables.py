"""Table synthesis: schema parsing, usage-based types, near-miss rows, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune_trainer.evaluation import sql
from kubetune_trainer.evaluation.sql_tables import (
    Atom,
    atom_holds,
    example_seed,
    infer_kinds,
    like_matches,
    parse_context,
    profile_query,
    synthesize,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]


def profiled(context: str, gold: str):
    query = sql.parse_query(gold)
    schema = parse_context(context)
    qualified = sql.qualify_query(query, sql.mapping_schema(schema))
    return schema, profile_query(qualified)


def kinds_of(context: str, gold: str):
    schema, profile = profiled(context, gold)
    return infer_kinds(schema, profile)[0]


def column(case: sql.GoldCase, table: str, name: str) -> list:
    index = case.database.columns(table).index(name)
    return [row[index] for row in case.database.rows[table]]


# ----------------------------------------------------------------------------- schema


def test_context_is_parsed_case_insensitively_with_declared_kinds():
    schema = parse_context("CREATE TABLE Head (Name VARCHAR, AGE INTEGER, score REAL)")
    assert schema == {"head": {"name": "text", "age": "int", "score": "real"}}


def test_duplicate_create_table_is_merged():
    schema = parse_context(
        "CREATE TABLE CARS_DATA (Id VARCHAR, Weight INTEGER); CREATE TABLE CARS_DATA (Weight"
        " INTEGER, Year VARCHAR)"
    )
    assert schema == {"cars_data": {"id": "text", "weight": "int", "year": "text"}}


def test_quoted_names_and_missing_types():
    schema = parse_context('CREATE TABLE "t" (`a` VARCHAR, b)')
    assert schema == {"t": {"a": "text", "b": "text"}}


@pytest.mark.parametrize(
    "gold",
    [
        # unqualified, qualified, and a table the context never created
        "SELECT AVG(Milliseconds) FROM GENRE AS T1 JOIN TRACK AS T2 ON T1.GenreId = T2.GenreId",
        "SELECT T2.Bytes FROM GENRE AS T1 JOIN TRACK AS T2 ON T1.GenreId = T2.GenreId",
        "SELECT COUNT(*) FROM tracks WHERE genre = 'x'",
    ],
)
def test_a_gold_query_using_undeclared_columns_is_unscorable(gold):
    context = (
        "CREATE TABLE TRACK (GenreId VARCHAR); CREATE TABLE GENRE (GenreId VARCHAR, Name VARCHAR)"
    )
    verdict = sql.score_example(gold, context, gold, execute_identical=True)
    assert verdict["status"] == sql.UNSCORABLE
    assert str(verdict["reason"]).startswith(sql.UNDECLARED)


def test_projection_aliases_are_not_undeclared_columns():
    gold = "SELECT a, COUNT(*) AS n FROM t GROUP BY a ORDER BY n"
    verdict = sql.score_example(gold, "CREATE TABLE t (a VARCHAR)", gold, execute_identical=True)
    assert verdict["status"] == sql.CORRECT


# ----------------------------------------------------------------------------- kinds


def test_varchar_compared_with_a_number_becomes_numeric():
    kinds = kinds_of(
        "CREATE TABLE city (Official_Name VARCHAR, Population VARCHAR)",
        "SELECT Official_Name FROM city WHERE Population > 1500 OR Population < 500",
    )
    assert kinds["city"] == {"official_name": "text", "population": "int"}


def test_decimal_literal_makes_a_real_column():
    kinds = kinds_of("CREATE TABLE t (x VARCHAR)", "SELECT * FROM t WHERE x > 2.5")
    assert kinds["t"]["x"] == "real"


def test_integer_declared_but_compared_with_a_string_becomes_text():
    kinds = kinds_of(
        "CREATE TABLE rental (rental_date INTEGER)",
        "SELECT COUNT(*) FROM rental WHERE rental_date > '2005-08-23 02:06:01'",
    )
    assert kinds["rental"]["rental_date"] == "text"


def test_summed_and_averaged_columns_are_numeric():
    kinds = kinds_of(
        "CREATE TABLE t (a VARCHAR, b VARCHAR, c VARCHAR)", "SELECT SUM(a), AVG(b), c FROM t"
    )
    assert kinds["t"] == {"a": "int", "b": "int", "c": "text"}


def test_joined_columns_share_one_kind():
    kinds = kinds_of(
        "CREATE TABLE a (id INTEGER); CREATE TABLE b (a_id VARCHAR)",
        "SELECT COUNT(*) FROM a JOIN b ON a.id = b.a_id",
    )
    assert kinds["a"]["id"] == kinds["b"]["a_id"] == "int"


def test_string_evidence_wins_across_a_join():
    kinds = kinds_of(
        "CREATE TABLE a (id INTEGER); CREATE TABLE b (a_id VARCHAR)",
        "SELECT COUNT(*) FROM a JOIN b ON a.id = b.a_id WHERE b.a_id = 'X7'",
    )
    assert kinds["a"]["id"] == kinds["b"]["a_id"] == "text"


def test_column_compared_with_another_column_takes_its_numeric_kind():
    kinds = kinds_of(
        "CREATE TABLE t (support VARCHAR, oppose VARCHAR)",
        "SELECT * FROM t WHERE support < oppose AND oppose > 5",
    )
    assert kinds["t"] == {"support": "int", "oppose": "int"}


def test_double_quoted_text_is_a_string_literal_not_a_column():
    _, profile = profiled(
        "CREATE TABLE t (x VARCHAR)", 'SELECT COUNT(*) FROM t WHERE x = "2007 as councilor 2014"'
    )
    assert profile.atom_order == [Atom(("t", "x"), "eq", ("2007 as councilor 2014",))]


def test_profile_records_literals_with_mirrored_comparisons():
    _, profile = profiled("CREATE TABLE t (x INTEGER)", "SELECT * FROM t WHERE 56 < x")
    assert profile.atom_order == [Atom(("t", "x"), "gt", (56,))]


# ----------------------------------------------------------------------------- atoms


@pytest.mark.parametrize(
    ("atom", "value", "holds"),
    [
        (Atom(("t", "x"), "gt", (56,)), 57, True),
        (Atom(("t", "x"), "gt", (56,)), 56, False),
        (Atom(("t", "x"), "gte", (56,)), 56, True),
        (Atom(("t", "x"), "between", (10, 15)), 15, True),
        (Atom(("t", "x"), "between", (10, 15)), 16, False),
        (Atom(("t", "x"), "in", (1, 2)), 2, True),
        (Atom(("t", "x"), "like", ("%Ha%",)), "shall", True),
        (Atom(("t", "x"), "like", ("8/%",)), "18/2", False),
        (Atom(("t", "x"), "isnull", (None,)), None, True),
        (Atom(("t", "x"), "eq", (5,)), None, False),
        (Atom(("t", "x"), "eq", (171,)), "171", True),
    ],
)
def test_atom_semantics(atom, value, holds):
    assert atom_holds(atom, value) is holds


def test_like_is_sqlite_like():
    assert like_matches("Apple", "a%")
    assert like_matches("a.c", "a_c")
    assert not like_matches("abc", "a.c")
    assert like_matches("50% off", "50%")


# ----------------------------------------------------------------------------- rows


def test_numeric_literal_gets_its_near_misses():
    case = sql.build_gold_case(
        "CREATE TABLE head (name VARCHAR, age INTEGER)",
        "SELECT name FROM head WHERE age > 56",
    )
    ages = column(case, "head", "age")
    assert {55, 56, 57} <= set(ages)
    assert any(age is not None and age > 57 for age in ages)  # satisfying rows vary


def test_string_literal_gets_other_strings():
    case = sql.build_gold_case(
        "CREATE TABLE head (name VARCHAR, born_state VARCHAR)",
        "SELECT name FROM head WHERE born_state = 'California'",
    )
    states = column(case, "head", "born_state")
    assert "California" in states
    assert len(set(states)) >= 3


def test_between_gets_both_boundaries_and_both_outsides():
    case = sql.build_gold_case(
        "CREATE TABLE department (num_employees INTEGER, ranking INTEGER)",
        "SELECT AVG(num_employees) FROM department WHERE ranking BETWEEN 10 AND 15",
    )
    assert {9, 10, 15, 16} <= set(column(case, "department", "ranking"))


def test_like_gets_a_match_and_a_miss():
    case = sql.build_gold_case(
        "CREATE TABLE albums (title VARCHAR)", "SELECT title FROM albums WHERE title LIKE 'A%'"
    )
    titles = [t for t in column(case, "albums", "title") if t is not None]
    assert any(like_matches(t, "A%") for t in titles)
    assert any(not like_matches(t, "A%") for t in titles)


def test_is_null_gets_a_null():
    case = sql.build_gold_case(
        "CREATE TABLE t (a VARCHAR, b VARCHAR)", "SELECT a FROM t WHERE b IS NULL"
    )
    assert None in column(case, "t", "b")


def test_joined_keys_match_and_one_row_per_table_matches_nothing():
    case = sql.build_gold_case(
        "CREATE TABLE a (id VARCHAR, name VARCHAR); CREATE TABLE b (a_id VARCHAR, x INTEGER)",
        "SELECT a.name FROM a JOIN b ON a.id = b.a_id WHERE b.x = 3",
    )
    left, right = set(column(case, "a", "id")), set(column(case, "b", "a_id"))
    assert left & right
    assert left - right and right - left


def test_group_sizes_are_distinct_so_count_ordering_has_no_ties():
    case = sql.build_gold_case(
        "CREATE TABLE department (creation VARCHAR)",
        "SELECT creation FROM department GROUP BY creation ORDER BY COUNT(*) DESC LIMIT 1",
    )
    values = column(case, "department", "creation")
    counts = sorted((values.count(v) for v in set(values)), reverse=True)
    assert counts[0] > counts[1]


def test_having_count_threshold_gets_a_big_enough_group():
    case = sql.build_gold_case(
        "CREATE TABLE trip (name VARCHAR)",
        "SELECT name FROM trip GROUP BY name HAVING COUNT(*) >= 12",
    )
    values = column(case, "trip", "name")
    assert max(values.count(v) for v in set(values)) >= 12
    assert case.result.rows


def test_a_row_sits_exactly_on_the_average():
    case = sql.build_gold_case(
        "CREATE TABLE e (name VARCHAR, salary INTEGER)",
        "SELECT name FROM e WHERE salary > (SELECT AVG(salary) FROM e)",
    )
    salaries = [s for s in column(case, "e", "salary") if s is not None]
    assert sum(salaries) / len(salaries) in salaries


def test_intersect_of_contradicting_filters_is_not_empty():
    case = sql.build_gold_case(
        "CREATE TABLE has_allergy (stuid VARCHAR, allergy VARCHAR)",
        "SELECT stuid FROM has_allergy WHERE allergy = 'Milk' INTERSECT SELECT stuid FROM"
        " has_allergy WHERE allergy = 'Cat'",
    )
    assert case.result.rows


def test_gold_result_is_never_the_whole_table_when_filtered():
    case = sql.build_gold_case(
        "CREATE TABLE department (creation VARCHAR, department_id VARCHAR); CREATE TABLE"
        " management (department_id VARCHAR, head_id VARCHAR); CREATE TABLE head (head_id"
        " VARCHAR, born_state VARCHAR)",
        "SELECT DISTINCT T1.creation FROM department AS T1 JOIN management AS T2 ON"
        " T1.department_id = T2.department_id JOIN head AS T3 ON T2.head_id = T3.head_id WHERE"
        " T3.born_state = 'Alabama'",
    )
    everything = sql.execute_prediction(
        case,
        "SELECT DISTINCT T1.creation FROM department AS T1 JOIN management AS T2 ON"
        " T1.department_id = T2.department_id JOIN head AS T3 ON T2.head_id = T3.head_id",
    )
    assert case.result.rows
    assert not sql.results_match(case.result, everything, ordered=False)


# ----------------------------------------------------------------------------- determinism


def test_seed_is_a_stable_hash():
    assert example_seed("a", "b") == example_seed("a", "b")
    assert example_seed("a", "b") != example_seed("ab", "")
    assert example_seed("CREATE TABLE t (x INTEGER)", "SELECT 1") == 6786939162944809962


def test_same_example_same_tables_other_attempt_other_tables():
    schema, profile = profiled(
        "CREATE TABLE head (name VARCHAR, age INTEGER)", "SELECT name FROM head WHERE age > 56"
    )
    first = synthesize(schema, profile, seed=7, attempt=0)
    assert synthesize(schema, profile, seed=7, attempt=0) == first
    assert synthesize(schema, profile, seed=7, attempt=1) != first
    assert synthesize(schema, profile, seed=8, attempt=0) != first


SNAPSHOT = """
import json, sys
from kubetune_trainer.evaluation import sql
rows = [json.loads(line) for line in open(sys.argv[1])][:40]
out = {}
for row in rows:
    try:
        case = sql.build_gold_case(row["context"], row["answer"])
        out[row["answer"]] = [case.database.rows, case.result.rows]
    except sql.Unscorable as problem:
        out[row["answer"]] = str(problem)
print(json.dumps(out, sort_keys=True, default=str))
"""


def test_tables_do_not_depend_on_the_interpreters_hash_seed(tmp_path):
    data = REPO.parent / "shared" / "datasets" / "sql-create-context" / "train.jsonl"
    assert data.exists(), f"missing shared dataset {data}"
    outputs = []
    for hash_seed in ("1", "2"):
        environment = {**os.environ, "PYTHONHASHSEED": hash_seed}
        completed = subprocess.run(
            [sys.executable, "-c", SNAPSHOT, str(data)],
            capture_output=True,
            text=True,
            env=environment,
            check=True,
        )
        outputs.append(json.loads(completed.stdout))
    assert outputs[0] == outputs[1]
