"""SQL scoring by execution: extract the query from a model output, run it and the gold query
on synthetic tables (`sql_tables.py`) loaded into an in-memory SQLite database, compare the
results.

Why execution rather than string match: `SELECT a, b ... WHERE x > 5` and
`SELECT a, b ... WHERE 5 < x` are the same answer. Why SQLite: the dataset's queries come from
Spider and WikiSQL, whose own evaluation runs them on SQLite, and Python ships it. sqlglot
parses and qualifies the gold query (to type and synthesize its tables) and transpiles a
prediction only when SQLite cannot run its text as written.

Per example `status`:
* `correct`: same result (a multiset of rows; in order only when the gold query orders, where
  rows tied on the ORDER BY keys may swap; numbers compared after rounding to 6 decimals;
  columns may come in another order). A prediction whose text is the gold query's is correct
  without being run;
* `wrong_result`: the prediction ran and returned something else;
* `prediction_error`: the prediction does not parse, names unknown tables or columns, or fails;
* `unscorable`: the gold query cannot be run, uses a column its CREATE TABLE context does not
  declare (the context cannot be a fair test then), or no synthetic tables give it a result
  that is non-empty and differs from its result without WHERE/HAVING; such rows are left out
  of `execution_accuracy`.

Predictions are untrusted text: the database is read-only (an authorizer allows reading
only), every failure is reported as `prediction_error`, and a query that runs more than
MAX_VM_STEPS SQLite instructions or returns more than MAX_RESULT_ROWS rows is stopped.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.dialects.sqlite import SQLite
from sqlglot.optimizer.qualify import qualify
from sqlglot.schema import MappingSchema

from kubetune_trainer.evaluation import InvalidReference, clean_output
from kubetune_trainer.evaluation.sql_tables import (
    Database,
    SchemaKinds,
    example_seed,
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
# A prediction that cross-joins everything is an error, not a hang: SQLite stops it after this
# many virtual-machine instructions (a gold query on the synthetic tables takes thousands).
MAX_VM_STEPS = 20_000_000
MAX_RESULT_ROWS = 100_000
_PROGRESS_EVERY = 100_000  # instructions between two checks of the budget
_TYPE_NAMES = {"int": "INT", "real": "DOUBLE", "text": "TEXT"}
_SQLITE_TYPES = {"int": "INTEGER", "real": "REAL", "text": "TEXT"}
# What a query may do: read tables and call functions (SQLite's authorizer action codes).
_READ_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)


class SpiderSQLite(SQLite):
    """SQLite as the dataset writes it: `"..."` is a string literal (`WHERE x = "2007 as
    councilor 2014"`), identifiers are quoted with backticks or brackets."""

    class Tokenizer(SQLite.Tokenizer):
        QUOTES = ["'", '"']
        IDENTIFIERS = [("[", "]"), "`"]


class SqlError(ValueError):
    """A query that cannot be parsed, qualified or executed."""


class SqlLimit(SqlError):
    """A query SQLite ran but stopped: too much work or too many rows (no other text of it
    would do better)."""


class Unscorable(ValueError):
    """A gold query that gives no usable test."""


# --------------------------------------------------------------------------- extraction

_TAGGED = (
    re.compile(r"<SQL>(.*?)(?:</SQL>|$)", re.DOTALL | re.IGNORECASE),
    re.compile(r"\[SQL\](.*?)(?:\[/SQL\]|$)", re.DOTALL | re.IGNORECASE),
    re.compile(r"```(?:sql|sqlite)?[ \t]*\n?(.*?)(?:```|$)", re.DOTALL | re.IGNORECASE),
)
# WITH only as a CTE (`WITH x AS (`), so that prose ("a query with a join: SELECT ...") is skipped
_QUERY_START = re.compile(
    r"\bWITH\s+(?:RECURSIVE\s+)?\w+\s*(?:\([\w\s,]*\))?\s*AS\s*\(|\bSELECT\b", re.IGNORECASE
)
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


class Tables:
    """The synthetic tables of one example in an in-memory SQLite database that queries can
    only read."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.connection = sqlite3.connect(":memory:", check_same_thread=False)
        for table, kinds in database.kinds.items():
            columns = ", ".join(f'"{name}" {_SQLITE_TYPES[kind]}' for name, kind in kinds.items())
            self.connection.execute(f'CREATE TABLE "{table}" ({columns})')
            if database.rows[table]:
                marks = ", ".join("?" * len(kinds))
                self.connection.executemany(
                    f'INSERT INTO "{table}" VALUES ({marks})', database.rows[table]
                )
        self.connection.commit()
        self.connection.set_authorizer(_read_only)
        self._steps_left = 0
        self.connection.set_progress_handler(self._spend, _PROGRESS_EVERY)

    def _spend(self) -> int:
        self._steps_left -= _PROGRESS_EVERY
        return 1 if self._steps_left <= 0 else 0  # non-zero interrupts the query

    def run(self, sql: str) -> Result:
        """The query's result; SqlError when SQLite refuses or stops it."""
        self._steps_left = MAX_VM_STEPS
        try:
            cursor = self.connection.execute(sql)
            rows = cursor.fetchmany(MAX_RESULT_ROWS + 1)
        except sqlite3.OperationalError as error:
            if str(error) == "interrupted":
                raise SqlLimit(f"stopped after {MAX_VM_STEPS:,} SQLite instructions") from None
            raise SqlError(f"sqlite: {error}") from None
        except (sqlite3.Error, ValueError, OverflowError) as error:
            raise SqlError(f"sqlite: {_first_line(error)}") from None
        if len(rows) > MAX_RESULT_ROWS:
            raise SqlLimit(f"returns more than {MAX_RESULT_ROWS:,} rows")
        return Result(tuple(d[0] for d in cursor.description or ()), rows)


def _read_only(action: int, *_: object) -> int:
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


def sqlite_text(query: exp.Expr) -> str:
    return query.sql(dialect="sqlite")


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


def _sort_keys_text(qualified: exp.Expr) -> str | None:
    """The gold SELECT with its ORDER BY expressions appended as extra columns, to find which
    result rows tie, as SQLite text. None for set operations and DISTINCT, where extra columns
    change rows. (The tree is edited and restored: copying it costs more than the run.)"""
    if not isinstance(qualified, exp.Select) or qualified.args.get("distinct"):
        return None
    order = qualified.args.get("order")
    if order is None:
        return None
    projections = list(qualified.expressions)
    aliased = {p.alias: p.this for p in projections if isinstance(p, exp.Alias)}
    keys = []
    for index, ordered in enumerate(order.expressions):
        key = ordered.this
        if isinstance(key, exp.Column) and not key.table and key.name in aliased:
            key = aliased[key.name]  # ORDER BY a projection alias
        keys.append(exp.alias_(key, f"_sort_key_{index}", copy=True))
    qualified.set("expressions", projections + keys)
    try:
        return sqlite_text(qualified)
    finally:
        qualified.set("expressions", projections)


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


def _unfiltered_text(qualified: exp.Expr) -> str | None:
    """The query without its top-level WHERE and HAVING as SQLite text, or None when it has
    neither (edited and restored, like `_sort_keys_text`)."""
    removed = [
        (select, clause, select.args[clause])
        for select in _top_level_selects(qualified)
        for clause in ("where", "having")
        if select.args.get(clause) is not None
    ]
    if not removed:
        return None
    for select, clause, _ in removed:
        select.set(clause, None)
    try:
        return sqlite_text(qualified)
    finally:
        for select, clause, node in removed:
            select.set(clause, node)


# --------------------------------------------------------------------------- gold cases


@dataclass
class GoldCase:
    """A scorable gold query: the tables it runs on and its result there."""

    query: exp.Expr  # qualified: every column bound to its table
    tables: Tables
    result: Result
    ordered: bool
    attempt: int
    blocks: list[int] | None = None  # tie runs of an ordered result
    sql: str = ""  # the gold query's text, as extracted from the reference

    @property
    def database(self) -> Database:
        return self.tables.database


UNDECLARED = "the gold query uses a column its CREATE TABLE context does not declare"
EMPTY = "the gold result is empty on every synthetic table"
WHOLE_TABLE = "the gold result is the whole table on every synthetic table"


def _qualified_gold(query: exp.Query, kinds: SchemaKinds) -> exp.Expr:
    """The gold query with every column bound to a declared table column. A column the context
    does not declare makes the row unscorable: tables made up for it would test a guess."""
    undeclared = _undeclared_columns(query, kinds)  # before qualify edits the tree in place
    try:
        return qualify_query(query, mapping_schema(kinds), copy=False)
    except SqlError as error:
        if undeclared:
            raise Unscorable(f"{UNDECLARED}: {', '.join(undeclared)}") from None
        raise Unscorable(f"gold query does not resolve: {error}") from None


def _undeclared_columns(query: exp.Expr, kinds: SchemaKinds) -> list[str]:
    """Column names the query uses that no declared table has and the query does not define
    itself (an alias of a select expression, a derived table or a CTE column)."""
    declared = {column for columns in kinds.values() for column in columns}
    defined = {alias.alias.lower() for alias in query.find_all(exp.Alias)}
    defined |= {
        column.name.lower()
        for table_alias in query.find_all(exp.TableAlias)
        for column in table_alias.columns
    }
    used = {column.name.lower() for column in query.find_all(exp.Column) if column.name}
    return sorted(used - declared - defined)


class _GoldQueries:
    """The gold query as SQLite text (with its sort keys as extra columns when it orders: one
    run gives the result and its ties), and the gold query without WHERE/HAVING."""

    def __init__(self, qualified: exp.Expr) -> None:
        self.width = len(qualified.selects) if isinstance(qualified, exp.Query) else 0
        self.gold = _sort_keys_text(qualified) or sqlite_text(qualified)
        self.unfiltered = _unfiltered_text(qualified)

    def result(self, tables: Tables) -> tuple[Result, list[int] | None]:
        result = tables.run(self.gold)
        if len(result.columns) == self.width:
            return result, None
        return _tie_blocks(result, self.width)

    def filters_nothing(self, tables: Tables, result: Result, ordered: bool) -> bool:
        if self.unfiltered is None:
            return False
        return results_match(tables.run(self.unfiltered), result, ordered)


def _first_usable(
    kinds: SchemaKinds, qualified: exp.Expr, seed: int
) -> tuple[Tables, Result, int, list[int] | None]:
    """The first attempt's tables on which the gold result is non-empty and differs from
    the result without WHERE/HAVING (a filter that filters nothing tests nothing)."""
    profile = profile_query(qualified)
    ordered = is_ordered(qualified)
    queries = _GoldQueries(qualified)
    problem = EMPTY
    for attempt in range(MAX_ATTEMPTS):
        tables = Tables(synthesize(kinds, profile, seed, attempt))
        try:
            result, blocks = queries.result(tables)
            if _degenerate(result):
                continue
            if queries.filters_nothing(tables, result, ordered):
                problem = WHOLE_TABLE
                continue
        except SqlError as error:
            raise Unscorable(f"gold query fails: {error}") from None
        return tables, result, attempt, blocks
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
    kinds = parse_context(context)
    qualified = _qualified_gold(query, kinds)
    seed = example_seed(context, gold_sql)
    tables, result, attempt, blocks = _first_usable(kinds, qualified, seed)
    return GoldCase(qualified, tables, result, is_ordered(qualified), attempt, blocks, gold_sql)


# --------------------------------------------------------------------------- scoring


def execute_prediction(case: GoldCase, predicted_sql: str) -> Result:
    """Run a prediction on the gold case's tables: its text as written when SQLite takes it,
    else as sqlglot transpiles it from the dataset's dialect (double-quoted strings,
    backticks, other dialects' functions)."""
    try:
        return case.tables.run(predicted_sql)
    except SqlLimit:
        raise
    except SqlError as error:
        first_error = error
    transpiled = sqlite_text(parse_query(predicted_sql))
    if transpiled == predicted_sql:
        raise first_error
    return case.tables.run(transpiled)


def score_example(
    prediction: str, context: str, gold: str, execute_identical: bool = False
) -> dict[str, object]:
    """`status` plus `error` (prediction_error) or `reason` (unscorable).

    A prediction whose text is the gold query's is correct without running it (same query,
    same tables), unless `execute_identical`.
    """
    try:
        case = build_gold_case(context, gold)
    except Unscorable as problem:
        return {"status": UNSCORABLE, "reason": str(problem)}
    predicted_sql = extract_query(prediction)
    if not execute_identical and predicted_sql == case.sql:
        return {"status": CORRECT}
    try:
        if not predicted_sql:
            raise SqlError("no SQL found")
        result = execute_prediction(case, predicted_sql)
    except SqlError as error:
        return {"status": PREDICTION_ERROR, "error": str(error)}
    matches = results_match(case.result, result, case.ordered, case.blocks)
    return {"status": CORRECT if matches else WRONG_RESULT}


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
