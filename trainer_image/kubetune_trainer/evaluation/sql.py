"""SQL scoring by execution: extract the query from a model output, run it and the gold query
on synthetic tables (`sql_tables.py`) with sqlglot's Python executor, compare the results.

Why execution rather than string match: `SELECT a, b ... WHERE x > 5` and
`SELECT a, b ... WHERE 5 < x` are the same answer. Why sqlglot's executor rather than sqlite3:
it is pure Python, runs wherever the trainer runs, and sqlite3 stays as an independent check
(`crosscheck_example`), whose agreement the scorer reports.

The executor is given SQLite's semantics where the two differ and the dataset cares (the Spider
queries were written for SQLite): LIKE is ASCII case-insensitive, integer division truncates,
a number compared with text compares as text, and a column that is neither grouped nor
aggregated (`SELECT name ... GROUP BY id`) takes one value of its group.

Per example `status`:
* `correct`: same result (a multiset of rows; in order only when the gold query orders, where
  rows tied on the ORDER BY keys may swap; numbers compared after rounding to 6 decimals;
  columns may come in another order). A prediction that parses to the gold query's tree is
  correct without being run;
* `wrong_result`: the prediction ran and returned something else;
* `prediction_error`: the prediction does not parse, names unknown tables or columns, or fails;
* `unscorable`: the gold query cannot be run, or no synthetic tables give it a result that is
  non-empty and not the whole table; such rows are left out of `execution_accuracy`.

Predictions are untrusted text, so every failure while parsing, planning or executing one is
caught and reported as `prediction_error`; a query that would cross-join more than
MAX_SCANNED_ROWS rows is refused rather than run.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.dialects.sqlite import SQLite
from sqlglot.executor.env import null_if_any
from sqlglot.executor.python import SUBQUERY_NODES, PythonExecutor
from sqlglot.executor.table import Table, Tables
from sqlglot.optimizer.qualify import qualify
from sqlglot.planner import Plan, Step
from sqlglot.schema import MappingSchema

from kubetune_trainer.evaluation import InvalidReference, clean_output
from kubetune_trainer.evaluation.sql_tables import (
    Database,
    SchemaKinds,
    Value,
    add_missing_references,
    bare_columns,
    example_seed,
    is_aggregate,
    like_matches,
    parse_context,
    profile_query,
    synthesize,
)

CORRECT = "correct"
WRONG_RESULT = "wrong_result"
PREDICTION_ERROR = "prediction_error"
UNSCORABLE = "unscorable"
STATUSES = (CORRECT, WRONG_RESULT, PREDICTION_ERROR, UNSCORABLE)

MAX_ATTEMPTS = 4
MAX_SCANNED_ROWS = 200_000  # a prediction that cross-joins everything is an error, not a hang
_TYPE_NAMES = {"int": "INT", "real": "DOUBLE", "text": "TEXT"}
_SQLITE_TYPES = {"int": "INTEGER", "real": "REAL", "text": "TEXT"}


class SpiderSQLite(SQLite):
    """SQLite as the dataset writes it: `"..."` is a string literal (`WHERE x = "2007 as
    councilor 2014"`), identifiers are quoted with backticks or brackets."""

    class Tokenizer(SQLite.Tokenizer):
        QUOTES = ["'", '"']
        IDENTIFIERS = [("[", "]"), "`"]


class SqlError(ValueError):
    """A query that cannot be parsed, qualified or executed."""


class Unscorable(ValueError):
    """A gold query that gives no usable test."""


# --------------------------------------------------------------------------- extraction

_TAGGED = (
    re.compile(r"<SQL>(.*?)(?:</SQL>|$)", re.DOTALL | re.IGNORECASE),
    re.compile(r"\[SQL\](.*?)(?:\[/SQL\]|$)", re.DOTALL | re.IGNORECASE),
    re.compile(r"```(?:sql|sqlite)?[ \t]*\n?(.*?)(?:```|$)", re.DOTALL | re.IGNORECASE),
)
# WITH only as a CTE (`WITH x AS (`), so that prose ("a query with a join: SELECT ...") is skipped
_QUERY_START = re.compile(r"\bWITH\s+\w+\s+AS\s*\(|\bSELECT\b", re.IGNORECASE)
_STATEMENT_END = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*"|`[^`]*`)|(;|\n\s*\n)""")


def extract_query(output: str) -> str:
    """The SQL in a model output: inside `<SQL>…</SQL>`, `[SQL]…[/SQL]` or a code fence when
    present, from the first SELECT/WITH on, up to the first `;` or blank line outside quotes."""
    text = clean_output(output)
    for pattern in _TAGGED:
        match = pattern.search(text)
        if match:
            text = match.group(1)
            break
    start = _QUERY_START.search(text)
    if start:
        text = text[start.start() :]
    for match in _STATEMENT_END.finditer(text):
        if match.group(2):
            return text[: match.start()].strip()
    return text.strip()


# --------------------------------------------------------------------------- parse and run


@dataclass(frozen=True)
class Result:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


@dataclass
class PreparedQuery:
    """A planned query, reusable on any tables of its schema."""

    plan: Plan
    cross_joined: list[list[str]]  # per SELECT, the tables whose rows multiply
    code_cache: dict[int, tuple[exp.Expr, Any]]


def parse_query(sql: str) -> exp.Query:
    """One SELECT (or set operation) in the dataset's dialect."""
    if not sql.strip():
        raise SqlError("no SQL found")
    try:
        statements = [s for s in sqlglot.parse(sql, read=SpiderSQLite) if s is not None]
    except sqlglot.errors.SqlglotError as error:
        raise SqlError(f"does not parse: {_first_line(error)}") from None
    if len(statements) != 1:
        raise SqlError(f"expected one statement, found {len(statements)}")
    statement = statements[0]
    if not isinstance(statement, exp.Query):
        raise SqlError(f"not a query: {statement.key.upper()}")
    return statement


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def mapping_schema(kinds: SchemaKinds) -> MappingSchema:
    typed: dict[str, object] = {
        table: {column: _TYPE_NAMES[kind] for column, kind in columns.items()}
        for table, columns in kinds.items()
    }
    return MappingSchema(typed, dialect=SpiderSQLite, normalize=False)


def qualify_query(query: exp.Query, schema: MappingSchema, copy: bool = True) -> exp.Expr:
    """Every column bound to its source; unknown tables or columns raise SqlError."""
    try:
        return qualify(
            query.copy() if copy else query,
            schema=schema,
            dialect=SpiderSQLite,
            quote_identifiers=False,
            validate_qualify_columns=True,
            # The executor keys intermediate results by source name: two scans of one table
            # under the same name (`... INTERSECT SELECT ... FROM same_table`) would collide.
            canonicalize_table_aliases=True,
        )
    except sqlglot.errors.SqlglotError as error:
        raise SqlError(_first_line(error)) from None


def _any_value_for_bare_columns(query: exp.Expr) -> exp.Expr:
    """`SELECT name, COUNT(*) ... GROUP BY id`: SQLite returns some `name` of each group;
    sqlglot's executor refuses. MIN(name) picks one deterministically (and is exact when name
    depends on id, as it does in the dataset's join-then-group queries)."""
    for select in list(query.find_all(exp.Select)):
        if not is_aggregate(select):
            continue
        group = select.args.get("group")
        keys = {key.sql() for key in group.expressions} if group else set()
        order = select.args.get("order")
        targets = list(select.expressions) + (list(order.expressions) if order else [])
        for target in targets:
            for column in bare_columns(target):
                if column.table and column.sql() not in keys:
                    column.replace(exp.Min(this=column.copy()))
    return query


def _untyped_division(query: exp.Expr) -> exp.Expr:
    """sqlglot's SQLite dialect marks `/` as integer division unless it knows an operand is
    REAL, which it does not without type annotation; SQLITE_ENV's DIV decides at run time."""
    for division in query.find_all(exp.Div):
        division.set("typed", False)
    return query


def _cross_joined_tables(query: exp.Expr) -> list[list[str]]:
    """Per SELECT, the tables whose rows multiply: the FROM table and every join without an
    ON/USING condition. (Equi-joins on the synthetic tables stay small.)"""
    joined = []
    for select in query.find_all(exp.Select):
        joins = [
            j
            for j in select.args.get("joins") or []
            if not (j.args.get("on") or j.args.get("using"))
        ]
        sources = [select.args.get("from_"), *joins]
        joined.append(
            [
                source.this.name.lower()
                for source in sources
                if source is not None and isinstance(source.this, exp.Table)
            ]
        )
    return joined


class _OwnedPlan(Plan):
    """sqlglot's Plan without its defensive copy of the whole tree: `prepare` hands over a
    tree nobody else holds (a copy, or a freshly parsed prediction)."""

    def __init__(self, expression: exp.Expr) -> None:
        self.expression = expression
        with_ = expression.args.get("with_")
        self.ctes = with_.copy() if with_ is not None else None
        self.root = Step.from_expression(expression)
        self._dag = {}


def prepare(qualified: exp.Expr, copy: bool = True) -> PreparedQuery:
    """Plan a qualified query (the planner copies it; `copy=False` lets the bare-column
    rewrite edit the caller's tree in place)."""
    try:
        tree = qualified.copy() if copy else qualified
        rewritten = _untyped_division(_any_value_for_bare_columns(tree))
        return PreparedQuery(_OwnedPlan(rewritten), _cross_joined_tables(rewritten), {})
    except Exception as error:  # the planner raises plain exceptions on what it cannot plan
        raise SqlError(f"cannot plan: {_first_line(error)}") from None


def _compare_sqlite(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], Any]:
    def compare(left: Any, right: Any) -> Any:
        if isinstance(left, str) != isinstance(right, str):
            left, right = str(left), str(right)
        return op(left, right)

    return null_if_any(compare)


def _sqlite_divide(left: Any, right: Any) -> Any:
    if right == 0:
        return None
    if isinstance(left, int) and isinstance(right, int):
        quotient = abs(left) // abs(right)
        return quotient if (left < 0) == (right < 0) else -quotient
    return left / right


SQLITE_ENV: dict[str, Any] = {
    "LIKE": null_if_any(lambda value, pattern: like_matches(str(value), str(pattern))),
    "DIV": null_if_any(_sqlite_divide),
    "EQ": _compare_sqlite(lambda a, b: a == b),
    "NEQ": _compare_sqlite(lambda a, b: a != b),
    "GT": _compare_sqlite(lambda a, b: a > b),
    "GTE": _compare_sqlite(lambda a, b: a >= b),
    "LT": _compare_sqlite(lambda a, b: a < b),
    "LTE": _compare_sqlite(lambda a, b: a <= b),
}


_CODE: dict[str, Any] = {}  # Python source of an expression -> its bytecode
_CODE_LIMIT = 20_000


def _compiled(text: str) -> Any:
    """Bytecode for the executor's Python text, shared by every plan (gold queries and their
    near misses repeat the same column references and conditions)."""
    code = _CODE.get(text)
    if code is None:
        if len(_CODE) >= _CODE_LIMIT:
            _CODE.clear()
        code = _CODE[text] = compile(text, text, "eval", optimize=2)
    return code


class _SqliteExecutor(PythonExecutor):
    """sqlglot's executor with three changes.

    * Each scan reads its own view of a table: sqlglot's Table has a single row cursor, so a
      subquery scanning the table its outer query is scanning (`FROM employees WHERE x =
      (SELECT ... FROM employees ...)`) would move the outer query's current row.
    * A scalar subquery that returns several rows gives its first value, as in SQLite,
      instead of an error (`WHERE salary > (SELECT salary ... WHERE id = 163)`).
    * Compiled expressions are kept per plan, since a gold query runs on several candidate
      tables; the cache holds the expression itself so that its id stays unique, and skips
      expressions with subqueries, whose code names per-executor plans.
    """

    def __init__(self, tables: Tables, code_cache: dict[int, tuple[exp.Expr, Any]]):
        super().__init__(env=SQLITE_ENV, tables=tables)
        self.code_cache = code_cache

    def generate(self, expression: Any) -> Any:
        if not expression:
            return None
        cached = self.code_cache.get(id(expression))
        if cached is not None and cached[0] is expression:
            return cached[1]
        has_subquery = expression.find(*SUBQUERY_NODES) is not None
        # sqlglot's generate() copies the expression before writing Python for it; the Python
        # generator does not edit what it writes out, so the copy (a third of the time spent
        # here) is skipped. A tree with subqueries is still copied, by _replace_subqueries.
        source = self._replace_subqueries(expression) if has_subquery else expression
        code = _compiled(self.generator.generate(source, copy=False))
        if not has_subquery:
            self.code_cache[id(expression)] = (expression, code)
        return code

    def scan_table(self, step: Any) -> Any:
        tables: Any = self.tables
        shared: Table = tables.find(step.source)
        table = Table(columns=shared.columns, rows=shared.rows)
        return self.context({step.source.alias_or_name: table}), iter(table)

    def _subquery_scalar(self, plan_name: Any, scope: Any, *args: Any) -> Any:
        rows = self._subquery_table(plan_name, scope, args).rows
        return rows[0][0] if rows else None


def _widest_scan(prepared: PreparedQuery, database: Database) -> int:
    widest = 0
    for tables in prepared.cross_joined:
        product = 1
        for table in tables:
            product *= max(1, len(database.rows.get(table, ())))
        widest = max(widest, product)
    return widest


def run(prepared: PreparedQuery, database: Database) -> Result:
    widest = _widest_scan(prepared, database)
    if widest > MAX_SCANNED_ROWS:
        raise SqlError(f"would scan {widest} joined rows")
    tables = Tables(
        {
            name: Table(columns=database.columns(name), rows=rows)
            for name, rows in database.rows.items()
        }
    )
    try:
        table = _SqliteExecutor(tables, prepared.code_cache).execute(prepared.plan)
    except Exception as error:  # model output can fail in any way the executor can
        raise SqlError(f"execution failed: {_first_line(error)}") from None
    return Result(tuple(table.columns), list(table.rows))


# --------------------------------------------------------------------------- comparison


def _normal(value: Any) -> tuple[int, Any]:
    """A sortable, type-aware form: 1 == 1.0 == Decimal('1.000000001'), text stays text."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, float(value))
    if isinstance(value, int | float | Decimal):
        return (1, round(float(value), 6) + 0.0)
    return (2, str(value))


def _normal_rows(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [tuple(_normal(value) for value in row) for row in rows]


def _width(result: Result) -> int:
    return len(result.rows[0]) if result.rows else len(result.columns)


def _same_rows(
    expected: list[tuple[Any, ...]], actual: list[tuple[Any, ...]], blocks: Sequence[int] | None
) -> bool:
    """Equal as multisets (`blocks` None), or block by block: rows the gold ORDER BY cannot
    tell apart (ties) may come in any order within their block."""
    if blocks is None:
        return sorted(expected) == sorted(actual)
    start = 0
    for size in blocks:
        end = start + size
        if sorted(expected[start:end]) != sorted(actual[start:end]):
            return False
        start = end
    return True


def results_match(
    gold: Result, predicted: Result, ordered: bool, blocks: Sequence[int] | None = None
) -> bool:
    """Same rows, allowing the columns in another order. Unordered: as multisets. Ordered: in
    the gold order, where `blocks` (sizes of runs of tied sort keys, default all 1) lets tied
    rows swap."""
    if _width(gold) != _width(predicted) or len(gold.rows) != len(predicted.rows):
        return False
    order_blocks = (list(blocks) if blocks else [1] * len(gold.rows)) if ordered else None
    expected = _normal_rows(gold.rows)
    actual = _normal_rows(predicted.rows)
    if _same_rows(expected, actual, order_blocks):
        return True
    width = _width(gold)
    if width < 2 or width > 6 or not gold.rows:
        return False
    expected_columns = [sorted(column) for column in zip(*expected, strict=True)]
    actual_columns = [sorted(column) for column in zip(*actual, strict=True)]
    for order in itertools.permutations(range(width)):
        if any(actual_columns[p] != expected_columns[i] for i, p in enumerate(order)):
            continue
        permuted = [tuple(row[p] for p in order) for row in actual]
        if _same_rows(expected, permuted, order_blocks):
            return True
    return False


def is_ordered(query: exp.Expr) -> bool:
    return query.args.get("order") is not None


def _degenerate(result: Result) -> bool:
    """Empty, or a single row of NULLs/zeros (`COUNT(*)` of a filter that matched nothing)."""
    if not result.rows:
        return True
    return len(result.rows) == 1 and all(value in (None, 0) for value in result.rows[0])


def _with_sort_keys(qualified: exp.Expr) -> exp.Expr | None:
    """The gold SELECT with its ORDER BY expressions appended as extra columns, to find which
    result rows tie. None for set operations and DISTINCT, where extra columns change rows."""
    if not isinstance(qualified, exp.Select) or qualified.args.get("distinct"):
        return None
    order = qualified.args.get("order")
    if order is None:
        return None
    keyed = qualified.copy()
    aliased = {p.alias: p.this for p in keyed.expressions if isinstance(p, exp.Alias)}
    for index, ordered in enumerate(keyed.args["order"].expressions):
        key = ordered.this
        if isinstance(key, exp.Column) and not key.table and key.name in aliased:
            key = aliased[key.name]  # ORDER BY a projection alias
        keyed.append("expressions", exp.alias_(key.copy(), f"_sort_key_{index}"))
    return keyed


def _tie_blocks(keyed: Result, width: int) -> tuple[Result, list[int]]:
    """The gold result without its key columns, and the sizes of its runs of equal keys."""
    rows = [row[:width] for row in keyed.rows]
    keys = [tuple(_normal(value) for value in row[width:]) for row in keyed.rows]
    blocks: list[int] = []
    for index, key in enumerate(keys):
        if index and key == keys[index - 1]:
            blocks[-1] += 1
        else:
            blocks.append(1)
    return Result(keyed.columns[:width], rows), blocks


def _top_level_selects(query: exp.Expr) -> list[exp.Select]:
    if isinstance(query, exp.Select):
        return [query]
    if isinstance(query, exp.SetOperation):
        return [s for s in query.find_all(exp.Select) if s.parent_select is None]
    return []


def _has_filters(query: exp.Expr) -> bool:
    return any(
        select.args.get(clause) is not None
        for select in _top_level_selects(query)
        for clause in ("where", "having")
    )


def _without_filters(qualified: exp.Expr) -> exp.Expr | None:
    """The query with its top-level WHERE and HAVING removed, or None when it has neither."""
    if not _has_filters(qualified):
        return None
    copy = qualified.copy()
    removed = False
    for select in _top_level_selects(copy):
        for clause in ("where", "having"):
            if select.args.get(clause) is not None:
                select.set(clause, None)
                removed = True
    return copy if removed else None


# --------------------------------------------------------------------------- gold cases


@dataclass
class GoldCase:
    """A scorable gold query: the tables it runs on and its result there."""

    query: exp.Query
    schema: MappingSchema
    database: Database
    result: Result
    ordered: bool
    attempt: int
    blocks: list[int] | None = None  # tie runs of an ordered result
    sql: str = ""  # the gold query's text, as extracted from the reference


def _prepare_gold(query: exp.Query, context: str) -> tuple[SchemaKinds, MappingSchema, Any]:
    kinds = add_missing_references(parse_context(context), query)
    schema = mapping_schema(kinds)
    try:
        qualified = qualify_query(query, schema)
    except SqlError as error:
        raise Unscorable(f"gold query does not resolve: {error}") from None
    return kinds, schema, qualified


EMPTY = "the gold result is empty on every synthetic table"
WHOLE_TABLE = "the gold result is the whole table on every synthetic table"


class _GoldPlans:
    """The gold query (with its sort keys as extra columns when it orders: one run gives the
    result and its ties), and the gold query without WHERE/HAVING, planned on first use."""

    def __init__(self, qualified: exp.Expr) -> None:
        """Consumes `qualified` (planning rewrites it)."""
        self.width = len(qualified.selects) if isinstance(qualified, exp.Query) else 0
        self.unfiltered_tree = _without_filters(qualified)
        self.unfiltered: PreparedQuery | None = None
        keyed = _with_sort_keys(qualified)
        try:
            self.gold = prepare(keyed if keyed is not None else qualified, copy=False)
        except SqlError as error:
            raise Unscorable(f"gold query fails: {error}") from None

    def result(self, database: Database) -> tuple[Result, list[int] | None]:
        result = run(self.gold, database)
        if len(result.columns) == self.width:
            return result, None
        return _tie_blocks(result, self.width)

    def filters_nothing(self, database: Database, result: Result, ordered: bool) -> bool:
        if self.unfiltered_tree is None:
            return False
        if self.unfiltered is None:
            self.unfiltered = prepare(self.unfiltered_tree, copy=False)  # planned only once
        return results_match(run(self.unfiltered, database), result, ordered)


def _first_usable(
    kinds: SchemaKinds, qualified: exp.Expr, seed: int
) -> tuple[Database, Result, int, list[int] | None]:
    """The first attempt's tables on which the gold result is non-empty and differs from
    the result without WHERE/HAVING (a filter that filters nothing tests nothing)."""
    profile = profile_query(qualified)
    ordered = is_ordered(qualified)
    plans = _GoldPlans(qualified)
    problem = EMPTY
    for attempt in range(MAX_ATTEMPTS):
        database = synthesize(kinds, profile, seed, attempt)
        try:
            result, blocks = plans.result(database)
            if _degenerate(result):
                continue
            if plans.filters_nothing(database, result, ordered):
                problem = WHOLE_TABLE
                continue
        except SqlError as error:
            raise Unscorable(f"gold query fails: {error}") from None
        return database, result, attempt, blocks
    raise Unscorable(problem)


@lru_cache(maxsize=256)
def build_gold_case(context: str, gold: str) -> GoldCase:
    """Tables and result for one reference row (cached: the same references are often scored
    against several prediction files). Raises Unscorable, or InvalidReference for a row that
    has no SQL at all."""
    gold_sql = extract_query(gold)
    if not gold_sql:
        raise InvalidReference("answer holds no SQL query")
    try:
        query = parse_query(gold_sql)
    except SqlError as error:
        raise Unscorable(f"gold query {error}") from None
    kinds, schema, qualified = _prepare_gold(query, context)
    seed = example_seed(context, gold_sql)
    database, result, attempt, blocks = _first_usable(kinds, qualified, seed)
    ordered = is_ordered(qualified)
    return GoldCase(query, schema, database, result, ordered, attempt, blocks, gold_sql)


# --------------------------------------------------------------------------- scoring


def execute_prediction(case: GoldCase, query: exp.Query) -> Result:
    """Run a parsed prediction on the gold case's tables (the tree is consumed)."""
    qualified = qualify_query(query, case.schema, copy=False)
    return run(prepare(qualified, copy=False), case.database)


def score_example(
    prediction: str, context: str, gold: str, execute_identical: bool = False
) -> dict[str, object]:
    """`status` plus `error` (prediction_error) or `reason` (unscorable).

    A prediction that parses to the same tree as the gold query is correct without running it
    (same query, same tables, deterministic executor), unless `execute_identical`.
    """
    try:
        case = build_gold_case(context, gold)
    except Unscorable as problem:
        return {"status": UNSCORABLE, "reason": str(problem)}
    try:
        predicted_sql = extract_query(prediction)
        if not execute_identical and predicted_sql == case.sql:
            return {"status": CORRECT}  # the same text parses to the same tree
        query = parse_query(predicted_sql)
        if not execute_identical and query == case.query and query.sql() == case.query.sql():
            return {"status": CORRECT}
        result = execute_prediction(case, query)
    except SqlError as error:
        return {"status": PREDICTION_ERROR, "error": str(error)}
    matches = results_match(case.result, result, case.ordered, case.blocks)
    return {"status": CORRECT if matches else WRONG_RESULT}


# --------------------------------------------------------------------------- sqlite check


def _sqlite_connection(database: Database) -> sqlite3.Connection:
    connection = sqlite3.connect(":memory:")
    connection.set_progress_handler(lambda: 1, 5_000_000)  # abort runaway predictions
    for table, kinds in database.kinds.items():
        columns = ", ".join(f'"{name}" {_SQLITE_TYPES[kind]}' for name, kind in kinds.items())
        connection.execute(f'CREATE TABLE "{table}" ({columns})')
        if database.rows[table]:
            marks = ", ".join("?" * len(kinds))
            connection.executemany(f'INSERT INTO "{table}" VALUES ({marks})', database.rows[table])
    return connection


def _sqlite_result(connection: sqlite3.Connection, query: exp.Expr) -> Result:
    cursor = connection.execute(query.sql(dialect="sqlite"))
    rows: list[tuple[Value, ...]] = cursor.fetchall()
    return Result(tuple(d[0] for d in cursor.description or ()), rows)


def run_sqlite(query: exp.Query, database: Database) -> Result:
    connection = _sqlite_connection(database)
    try:
        return _sqlite_result(connection, query)
    except sqlite3.Error as error:
        raise SqlError(f"sqlite: {error}") from None
    finally:
        connection.close()


def crosscheck_example(prediction: str, context: str, gold: str) -> dict[str, object] | None:
    """Score the example again with sqlite3 on the same tables. None when unscorable.
    `agree` is true when sqlite gives the gold query the same result and the prediction the
    same status as sqlglot's executor did."""
    try:
        case = build_gold_case(context, gold)
    except Unscorable:
        return None
    ours = score_example(prediction, context, gold)["status"]
    try:
        gold_result = run_sqlite(case.query, case.database)
    except SqlError:
        return {"agree": False, "status": ours, "sqlite_status": "gold_error"}
    gold_agrees = results_match(case.result, gold_result, case.ordered, case.blocks)
    try:
        predicted = run_sqlite(parse_query(extract_query(prediction)), case.database)
        matches = results_match(gold_result, predicted, case.ordered, case.blocks)
        theirs = CORRECT if matches else WRONG_RESULT
    except SqlError:
        theirs = PREDICTION_ERROR
    return {"agree": gold_agrees and ours == theirs, "status": ours, "sqlite_status": theirs}


def aggregate(details: Sequence[dict[str, object]]) -> dict[str, float]:
    """`execution_accuracy` is over scorable rows; `scorable` is the fraction of all rows."""
    total = len(details)
    counts = {status: sum(row["status"] == status for row in details) for status in STATUSES}
    scorable = total - counts[UNSCORABLE]

    def over_scorable(count: int) -> float:
        return count / scorable if scorable else 0.0

    return {
        "execution_accuracy": over_scorable(counts[CORRECT]),
        "scorable": scorable / total if total else 0.0,
        "wrong_result_rate": over_scorable(counts[WRONG_RESULT]),
        "prediction_error_rate": over_scorable(counts[PREDICTION_ERROR]),
    }
