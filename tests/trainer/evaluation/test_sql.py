"""SQL by execution: query extraction, comparison rules, near-miss predictions, sqlite3
cross-check, and the real-data checks on the shared 4,000-row sample."""

from __future__ import annotations

import json
from collections import Counter
from multiprocessing import get_context
from pathlib import Path

import pytest
from sqlglot import exp

from kubetune_trainer.evaluation import InvalidReference, sql
from kubetune_trainer.evaluation.scoring import score_predictions
from kubetune_trainer.evaluation.sql_tables import parse_context

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "datasets" / "sql-create-context"

HEAD = "CREATE TABLE head (name VARCHAR, born_state VARCHAR, age INTEGER)"
HEAD_GOLD = "SELECT name FROM head WHERE age > 56"
DEPT = "CREATE TABLE department (name VARCHAR, budget INTEGER, ranking INTEGER)"


def status(prediction: str, gold: str = HEAD_GOLD, context: str = HEAD) -> str:
    return str(sql.score_example(prediction, context, gold)["status"])


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("output", "query"),
    [
        ("SELECT a FROM t", "SELECT a FROM t"),
        ("  SELECT a FROM t;  ", "SELECT a FROM t"),
        ("<SQL>SELECT a FROM t</SQL> and some words", "SELECT a FROM t"),
        ("[SQL] SELECT a FROM t [/SQL]", "SELECT a FROM t"),
        ("```sql\nSELECT a FROM t\n```", "SELECT a FROM t"),
        ("```\nSELECT a FROM t\n```", "SELECT a FROM t"),
        ("SELECT a FROM t</s>SELECT b FROM t", "SELECT a FROM t"),
        ("SELECT a FROM t<|endoftext|>", "SELECT a FROM t"),
        ("Sure, the query is: SELECT a FROM t", "SELECT a FROM t"),
        ("A query with a join: SELECT a FROM t", "SELECT a FROM t"),
        ("SELECT a FROM t\n\nThis query selects a.", "SELECT a FROM t"),
        ("SELECT a FROM t; SELECT b FROM t", "SELECT a FROM t"),
        ("SELECT a FROM t WHERE b = 'x;y'; DROP TABLE t", "SELECT a FROM t WHERE b = 'x;y'"),
        ('SELECT a FROM t WHERE b = "x\n\ny"', 'SELECT a FROM t WHERE b = "x\n\ny"'),
        ("<SQL>SELECT a\nFROM t", "SELECT a\nFROM t"),
        ("with x as (select 1) select * from x", "with x as (select 1) select * from x"),
        ("", ""),
    ],
)
def test_extract_query(output, query):
    assert sql.extract_query(output) == query


# ----------------------------------------------------------------------------- parsing


def test_double_quoted_text_is_a_string():
    query = sql.parse_query('SELECT a FROM t WHERE x = "2007 as councilor 2014"')
    literal = query.find(exp.Literal)
    assert literal is not None and literal.is_string


def test_backticks_and_brackets_are_identifiers():
    query = sql.parse_query("SELECT `Name`, [Age] FROM t")
    assert [column.name for column in query.find_all(exp.Column)] == ["Name", "Age"]


@pytest.mark.parametrize(
    "text", ["", "SELECT FROM WHERE", "DROP TABLE head", "SELECT 1; SELECT 2", "hello"]
)
def test_parse_query_rejects(text):
    with pytest.raises(sql.SqlError):
        sql.parse_query(text)


# ----------------------------------------------------------------------------- comparison


def result(*rows, columns=("a",)):
    return sql.Result(tuple(columns), list(rows))


def test_results_are_multisets_unless_ordered():
    assert sql.results_match(result((1,), (2,)), result((2,), (1,)), ordered=False)
    assert not sql.results_match(result((1,), (2,)), result((2,), (1,)), ordered=True)
    assert not sql.results_match(
        result((1,), (1,)),
        result(
            (1,),
        ),
        ordered=False,
    )


def test_numbers_compare_by_value_and_text_stays_text():
    assert sql.results_match(result((1,)), result((1.0,)), ordered=False)
    assert sql.results_match(result((1 / 3,)), result((0.3333333333,)), ordered=False)
    assert not sql.results_match(result((1,)), result(("1",)), ordered=False)
    assert sql.results_match(result((None,)), result((None,)), ordered=False)
    assert sql.results_match(result((True,)), result((1,)), ordered=False)


def test_columns_may_come_in_another_order():
    gold = result((1, "a"), (2, "b"), columns=("n", "s"))
    assert sql.results_match(gold, result(("a", 1), ("b", 2), columns=("s", "n")), False)
    assert sql.results_match(gold, result(("a", 1), ("b", 2), columns=("s", "n")), True)
    assert not sql.results_match(gold, result(("b", 1), ("a", 2), columns=("s", "n")), False)


def test_extra_or_missing_columns_are_wrong():
    assert not sql.results_match(result((1,)), result((1, 1), columns=("a", "b")), False)


# ----------------------------------------------------------------------------- near misses


def test_gold_itself_is_correct_even_when_executed():
    assert sql.score_example(HEAD_GOLD, HEAD, HEAD_GOLD, execute_identical=True) == {
        "status": sql.CORRECT
    }


@pytest.mark.parametrize(
    "prediction",
    [
        "SELECT name FROM head WHERE 56 < age",
        "select NAME from HEAD where AGE > 56",
        "SELECT name FROM head WHERE age >= 57",
        "SELECT name FROM head WHERE NOT age <= 56",
        "SELECT T1.name FROM head AS T1 WHERE T1.age > 56",
        "SELECT name FROM head WHERE age > 56 AND age > 50",
        "<SQL>SELECT name FROM head WHERE age > 56;</SQL>",
    ],
)
def test_equivalent_predictions_are_correct(prediction):
    assert status(prediction) == sql.CORRECT


@pytest.mark.parametrize(
    ("name", "prediction"),
    [
        ("off-by-one literal", "SELECT name FROM head WHERE age > 55"),
        ("off-by-one literal up", "SELECT name FROM head WHERE age > 57"),
        (">= for >", "SELECT name FROM head WHERE age >= 56"),
        ("< for >", "SELECT name FROM head WHERE age < 56"),
        ("dropped condition", "SELECT name FROM head"),
        ("wrong column", "SELECT born_state FROM head WHERE age > 56"),
        ("extra column", "SELECT name, age FROM head WHERE age > 56"),
        ("missing DISTINCT irrelevant but LIMIT", "SELECT name FROM head WHERE age > 56 LIMIT 1"),
    ],
)
def test_near_miss_predictions_are_wrong(name, prediction):
    assert status(prediction) == sql.WRONG_RESULT, name


@pytest.mark.parametrize(
    ("gold", "prediction"),
    [
        ("SELECT MAX(budget) FROM department", "SELECT MIN(budget) FROM department"),
        ("SELECT AVG(budget) FROM department", "SELECT SUM(budget) FROM department"),
        ("SELECT SUM(budget) FROM department", "SELECT COUNT(budget) FROM department"),
        (
            "SELECT name FROM department ORDER BY budget DESC",
            "SELECT name FROM department ORDER BY budget",
        ),
        (
            "SELECT name FROM department ORDER BY budget DESC LIMIT 1",
            "SELECT name FROM department ORDER BY budget ASC LIMIT 1",
        ),
        (
            "SELECT name FROM department ORDER BY budget DESC",
            "SELECT name FROM department ORDER BY ranking DESC",
        ),
        (
            "SELECT AVG(budget) FROM department WHERE ranking BETWEEN 10 AND 15",
            "SELECT AVG(budget) FROM department WHERE ranking BETWEEN 10 AND 14",
        ),
        (
            "SELECT name FROM department WHERE ranking = 3 AND budget > 100",
            "SELECT name FROM department WHERE ranking = 3",
        ),
        (
            "SELECT name FROM department WHERE ranking = 3 OR budget > 100",
            "SELECT name FROM department WHERE ranking = 3",
        ),
        (
            "SELECT name FROM department WHERE name LIKE '%Ha%'",
            "SELECT name FROM department WHERE name LIKE 'Ha%'",
        ),
        (
            "SELECT name FROM department WHERE name <> 'Sales'",
            "SELECT name FROM department",
        ),
        (
            "SELECT name FROM department WHERE budget > (SELECT AVG(budget) FROM department)",
            "SELECT name FROM department WHERE budget >= (SELECT AVG(budget) FROM department)",
        ),
    ],
)
def test_wrong_aggregates_orders_and_conditions_are_wrong(gold, prediction):
    assert status(prediction, gold, DEPT) == sql.WRONG_RESULT


JOIN_CONTEXT = (
    "CREATE TABLE department (department_id VARCHAR, name VARCHAR); CREATE TABLE management"
    " (department_id VARCHAR, head_id VARCHAR, temporary_acting VARCHAR); CREATE TABLE head"
    " (head_id VARCHAR, name VARCHAR, age INTEGER)"
)
JOIN_GOLD = (
    "SELECT DISTINCT T1.name FROM department AS T1 JOIN management AS T2 ON T1.department_id ="
    " T2.department_id JOIN head AS T3 ON T2.head_id = T3.head_id WHERE T3.age > 56 AND"
    " T2.temporary_acting = 'Yes'"
)


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        (JOIN_GOLD, sql.CORRECT),
        (
            JOIN_GOLD.replace("DISTINCT ", "DISTINCT ").replace("T3.age > 56", "56 < T3.age"),
            sql.CORRECT,
        ),
        (JOIN_GOLD.replace(" AND T2.temporary_acting = 'Yes'", ""), sql.WRONG_RESULT),
        (JOIN_GOLD.replace("T3.age > 56 AND ", ""), sql.WRONG_RESULT),
        (JOIN_GOLD.replace("> 56", "> 57"), sql.WRONG_RESULT),
        (JOIN_GOLD.replace("> 56", ">= 56"), sql.WRONG_RESULT),
        (JOIN_GOLD.replace("'Yes'", "'No'"), sql.WRONG_RESULT),
        (JOIN_GOLD.replace("SELECT DISTINCT T1.name", "SELECT DISTINCT T3.name"), sql.WRONG_RESULT),
        (
            JOIN_GOLD.replace("T2.head_id = T3.head_id", "T2.department_id = T3.head_id"),
            sql.WRONG_RESULT,
        ),
        (JOIN_GOLD.replace("T3.age", "T3.agee"), sql.PREDICTION_ERROR),
    ],
)
def test_three_table_join_near_misses(prediction, expected):
    assert status(prediction, JOIN_GOLD, JOIN_CONTEXT) == expected


def test_count_star_versus_count_column_differ_when_nulls_matter():
    context = "CREATE TABLE t (a VARCHAR, b VARCHAR)"
    gold = "SELECT COUNT(b) FROM t WHERE a = 'x'"
    assert status("SELECT COUNT(*) FROM t WHERE a = 'x'", gold, context) == sql.WRONG_RESULT


def test_group_by_with_bare_column_runs_like_sqlite():
    context = (
        "CREATE TABLE church (name VARCHAR, church_id VARCHAR); CREATE TABLE wedding"
        " (church_id VARCHAR)"
    )
    gold = (
        "SELECT T1.name FROM church AS T1 JOIN wedding AS T2 ON T1.church_id = T2.church_id"
        " GROUP BY T1.church_id HAVING COUNT(*) >= 2"
    )
    assert status(gold, gold, context) == sql.CORRECT
    assert status(gold.replace(">= 2", ">= 3"), gold, context) == sql.WRONG_RESULT


def test_intersect_of_one_table_with_itself():
    context = "CREATE TABLE publication (Publisher VARCHAR, Price INTEGER)"
    gold = (
        "SELECT Publisher FROM publication WHERE Price > 10000000 INTERSECT SELECT Publisher"
        " FROM publication WHERE Price < 5000000"
    )
    assert sql.score_example(gold, context, gold, execute_identical=True)["status"] == sql.CORRECT
    union = gold.replace("INTERSECT", "UNION")
    assert status(union, gold, context) == sql.WRONG_RESULT


def test_duplicate_create_table_is_tolerated():
    context = (
        "CREATE TABLE CARS_DATA (Id VARCHAR, Weight INTEGER); CREATE TABLE CARS_DATA (Weight"
        " INTEGER, Year VARCHAR)"
    )
    gold = "SELECT Weight FROM CARS_DATA WHERE Year = '1974'"
    assert status(gold, gold, context) == sql.CORRECT
    assert status("SELECT Weight FROM CARS_DATA", gold, context) == sql.WRONG_RESULT


def test_double_quoted_literal_in_gold_and_single_quoted_in_prediction_agree():
    context = "CREATE TABLE t (x VARCHAR, y VARCHAR)"
    gold = 'SELECT y FROM t WHERE x = "2007 as councilor 2014"'
    assert status("SELECT y FROM t WHERE x = '2007 as councilor 2014'", gold, context) == (
        sql.CORRECT
    )


def test_sqlite_semantics_like_is_case_insensitive_and_division_truncates():
    context = "CREATE TABLE t (name VARCHAR, a INTEGER, b INTEGER)"
    gold = "SELECT name FROM t WHERE name LIKE 'ab%'"
    assert status("SELECT name FROM t WHERE name LIKE 'AB%'", gold, context) == sql.CORRECT
    case = sql.build_gold_case(context, gold)
    division = sql.execute_prediction(case, "SELECT 7 / 2, 7.0 / 2, 1 / 0")
    assert division.rows == [(3, 3.5, None)]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "prediction",
    [
        "",
        "I cannot answer that.",
        "SELECT name FROM heads WHERE age > 56",
        "SELECT nam FROM head WHERE age > 56",
        "SELECT name FROM head WHERE",
        "DELETE FROM head",
        "SELECT a.name FROM head AS a, head AS b, head AS c, head AS d, head AS e, head AS f",
    ],
)
def test_prediction_errors(prediction):
    result = sql.score_example(prediction, HEAD, HEAD_GOLD)
    assert result["status"] == sql.PREDICTION_ERROR
    assert result["error"]


def test_gold_that_does_not_parse_is_unscorable():
    result = sql.score_example("SELECT 1", HEAD, "SELECT FROM WHERE")
    assert result["status"] == sql.UNSCORABLE and result["reason"]


def test_gold_without_any_rows_possible_is_unscorable():
    result = sql.score_example("SELECT 1", HEAD, "SELECT name FROM head WHERE age > 5 AND age < 3")
    assert result["status"] == sql.UNSCORABLE


def test_empty_gold_is_an_invalid_reference():
    with pytest.raises(InvalidReference):
        sql.score_example("SELECT 1", HEAD, "   ")


def test_aggregate_excludes_unscorable_rows():
    details = [
        {"status": sql.CORRECT},
        {"status": sql.WRONG_RESULT},
        {"status": sql.PREDICTION_ERROR},
        {"status": sql.CORRECT},
        {"status": sql.UNSCORABLE},
    ]
    metrics = sql.aggregate(details)
    assert metrics["execution_accuracy"] == 0.5
    assert metrics["scorable"] == 0.8
    assert metrics["prediction_error_rate"] == 0.25


def test_score_predictions_gives_one_status_per_row_in_order():
    metrics, details = score_predictions(
        "sql",
        [HEAD_GOLD, "SELECT name FROM head WHERE age >= 56", "nonsense"],
        [{"context": HEAD, "answer": HEAD_GOLD}] * 3,
    )
    assert [d["status"] for d in details] == [sql.CORRECT, sql.WRONG_RESULT, sql.PREDICTION_ERROR]
    assert all(0.0 <= value <= 1.0 for value in metrics.values())


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM head",
        "UPDATE head SET age = 1",
        "INSERT INTO head VALUES ('x', 1)",
        "DROP TABLE head",
        "ATTACH DATABASE ':memory:' AS other",
        "PRAGMA query_only = OFF",
        "CREATE TABLE t (a)",
    ],
)
def test_a_prediction_can_only_read_the_tables(statement):
    case = sql.build_gold_case(HEAD, HEAD_GOLD)
    rows = {t: list(r) for t, r in case.database.rows.items()}
    with pytest.raises(sql.SqlError, match="not authorized"):
        case.tables.run(statement)
    assert sql.score_example(statement, HEAD, HEAD_GOLD)["status"] == sql.PREDICTION_ERROR
    assert case.tables.run("SELECT * FROM head").rows == rows["head"]
    assert sql.score_example(HEAD_GOLD, HEAD, HEAD_GOLD, execute_identical=True)["status"] == (
        sql.CORRECT
    )


def test_a_runaway_prediction_is_stopped():
    endless = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT COUNT(*) FROM n"
    )
    result = sql.score_example(endless, HEAD, HEAD_GOLD)
    assert result["status"] == sql.PREDICTION_ERROR
    assert "stopped after" in str(result["error"])


def test_text_sqlite_cannot_run_is_transpiled_from_the_dataset_dialect():
    case = sql.build_gold_case(HEAD, HEAD_GOLD)
    with pytest.raises(sql.SqlError):
        case.tables.run("SELECT name FROM head WHERE age > 56 AND name ILIKE '%'")
    transpiled = "SELECT name FROM head WHERE age > 56 AND name ILIKE '%'"
    assert status(transpiled, HEAD_GOLD, HEAD) == sql.CORRECT


# ----------------------------------------------------------------------------- real data

FLIPPED = {exp.GT: exp.GTE, exp.GTE: exp.GT, exp.LT: exp.LTE, exp.LTE: exp.LT}
SWAPPED_AGGREGATE = {exp.Max: exp.Min, exp.Min: exp.Max, exp.Avg: exp.Sum, exp.Sum: exp.Avg}


def _where(query: exp.Select) -> list[exp.Expression]:
    where = query.args.get("where")
    return list(where.walk()) if where else []


def _off_by_one(query: exp.Select, _: str) -> exp.Select | None:
    for node in _where(query):
        if isinstance(node, exp.Literal) and node.is_number and type(node.parent) in FLIPPED:
            node.replace(exp.Literal.number(str(int(float(node.this)) + 1)))
            return query
    return None


def _flip_inclusive(query: exp.Select, _: str) -> exp.Select | None:
    for node in _where(query):
        if type(node) in FLIPPED:
            node.replace(
                FLIPPED[type(node)](this=node.this.copy(), expression=node.expression.copy())
            )
            return query
    return None


def _drop_condition(query: exp.Select, _: str) -> exp.Select | None:
    where = query.args.get("where")
    if where is None:
        return None
    if isinstance(where.this, exp.And):
        where.this.replace(where.this.this.copy())
    else:
        query.set("where", None)
    return query


def _wrong_aggregate(query: exp.Select, _: str) -> exp.Select | None:
    for node in (n for projection in query.expressions for n in projection.walk()):
        if type(node) in SWAPPED_AGGREGATE:
            node.replace(SWAPPED_AGGREGATE[type(node)](this=node.this.copy()))
            return query
    return None


def _flip_order(query: exp.Select, _: str) -> exp.Select | None:
    order = query.args.get("order")
    if order is None:
        return None
    order.expressions[0].set("desc", not order.expressions[0].args.get("desc"))
    return query


def _wrong_column(query: exp.Select, context: str) -> exp.Select | None:
    schema = parse_context(context)
    for projection in query.expressions:
        target = projection.unalias()
        if isinstance(target, exp.Column) and not target.table:
            for columns in schema.values():
                others = [name for name in columns if name != target.name.lower()]
                if target.name.lower() in columns and others:
                    target.replace(exp.column(others[0]))
                    return query
            return None
    return None


MUTATIONS = {
    "off_by_one": _off_by_one,
    "flip_inclusive": _flip_inclusive,
    "drop_condition": _drop_condition,
    "wrong_aggregate": _wrong_aggregate,
    "flip_order": _flip_order,
    "wrong_column": _wrong_column,
}
SAMPLE_EVERY = 10  # mutations on every 10th row (400 rows)


def _check_row(item: tuple[int, dict]) -> dict:
    """Everything the real-data tests need from one row, computed in a worker process."""
    index, row = item
    gold, context = row["answer"], row["context"]
    verdict = sql.score_example(gold, context, gold, execute_identical=True)
    out: dict = {"status": verdict["status"], "reason": verdict.get("reason")}
    if out["status"] == sql.UNSCORABLE:
        return out
    out["tables"] = _table_rules(sql.build_gold_case(context, gold))
    if index % SAMPLE_EVERY:
        return out
    query = sql.parse_query(sql.extract_query(gold))
    out["mutants"] = {}
    if isinstance(query, exp.Select):
        for name, mutate in MUTATIONS.items():
            mutant = mutate(query.copy(), context)
            if mutant is not None:
                text = mutant.sql(dialect="sqlite")
                out["mutants"][name] = sql.score_example(text, context, gold)["status"]
    return out


def _table_rules(case: sql.GoldCase) -> dict:
    """For a plain filter on one table (no join, grouping, aggregate or set operation): the
    rows of its result and of its table."""
    query = case.query
    plain = (
        isinstance(query, exp.Select)
        and query.args.get("where") is not None
        and not query.args.get("joins")
        and not query.args.get("group")
        and not query.args.get("distinct")
        and not query.args.get("limit")
        and not any(isinstance(p.unalias(), exp.AggFunc) for p in query.expressions)
        and isinstance(query.args["from_"].this, exp.Table)
    )
    if not plain:
        return {}
    table = query.args["from_"].this.name.lower()
    return {"result": len(case.result.rows), "table": len(case.database.rows[table])}


@pytest.fixture(scope="module")
def sample_results() -> list[dict]:
    rows = []
    for name in ("train.jsonl", "heldout.jsonl"):
        path = DATA / name
        assert path.exists(), f"missing shared dataset {path}"
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 4000
    # fork: the workers inherit this module, and the test process holds no threads
    with get_context("fork").Pool(2) as pool:
        return pool.map(_check_row, list(enumerate(rows)), chunksize=50)


def test_scorable_fraction_of_the_shared_sample(sample_results):
    """4.3% of the sample's gold queries use a column their context does not declare, and
    are unscorable for it; of the others, at least 98% must be scorable."""
    scorable = sum(r["status"] != sql.UNSCORABLE for r in sample_results)
    declared = [r for r in sample_results if not str(r["reason"]).startswith(sql.UNDECLARED)]
    print(
        f"scorable: {scorable / len(sample_results):.4f} of all rows, {scorable / len(declared):.4f} of rows with declared columns"
    )
    assert scorable / len(sample_results) >= 0.93
    assert scorable / len(declared) >= 0.98


def test_gold_queries_using_undeclared_columns_are_unscorable(sample_results):
    undeclared = [r for r in sample_results if str(r["reason"]).startswith(sql.UNDECLARED)]
    assert undeclared  # the sample has some: the contexts were generated and drop columns
    assert all(r["status"] == sql.UNSCORABLE for r in undeclared)


def test_no_scorable_filter_returns_nothing_or_its_whole_table(sample_results):
    """The case study's rule for synthesized tables, on every plain single-table filter."""
    plain = [r["tables"] for r in sample_results if r.get("tables")]
    assert len(plain) >= 500
    assert all(0 < t["result"] < t["table"] for t in plain), [
        t for t in plain if not 0 < t["result"] < t["table"]
    ][:5]


def test_gold_against_gold_is_correct_on_every_scorable_row(sample_results):
    statuses = Counter(r["status"] for r in sample_results)
    assert set(statuses) <= {sql.CORRECT, sql.UNSCORABLE}, statuses


# Minimum share of near misses that must score as not correct. Some are legitimately
# equivalent (`>=` vs `>` against an average with no row on it, MAX vs MIN of one row).
SENSITIVITY = {
    "off_by_one": 0.90,
    "flip_inclusive": 0.85,
    "drop_condition": 0.97,
    "wrong_aggregate": 0.95,
    "flip_order": 0.93,
    "wrong_column": 0.97,
}


def test_near_miss_mutants_of_real_queries_are_caught(sample_results):
    outcomes: dict[str, Counter] = {name: Counter() for name in MUTATIONS}
    for r in sample_results:
        for name, outcome in r.get("mutants", {}).items():
            outcomes[name][outcome] += 1
    for name, counts in outcomes.items():
        scored = sum(counts.values()) - counts[sql.UNSCORABLE]
        caught = (counts[sql.WRONG_RESULT] + counts[sql.PREDICTION_ERROR]) / scored
        print(f"{name}: {caught:.3f} of {scored}")
        assert scored >= 20, name
        assert caught >= SENSITIVITY[name], (name, dict(counts))
