"""Small synthetic databases on which a gold SQL query is a sharp test.

sql-create-context gives only `CREATE TABLE` statements, so scoring by execution needs data.
Instead of asking a paid LLM for it (as the case study did), the tables are made here from the
schema and from the gold query itself:

* Column types come from how the gold query uses a column (compared with a number, summed,
  LIKE-matched, joined to a typed column ...), then from the declaration: the dataset declares
  most numbers as VARCHAR. Columns the query uses but the context forgot are added.
* Rows are seeded with the query's literals and their near misses (literal +/- 1, the
  neighbouring string, a string that misses the LIKE pattern, NULL for IS NULL), each in an
  otherwise satisfying row with a join "slot" of its own, so an off-by-one literal, `>` for
  `>=`, a dropped or wrong condition changes the result even behind a join or a DISTINCT.
* Columns the query joins, groups, DISTINCTs or INTERSECTs on take their values from small
  shared domains by slot, with skewed frequencies (3, 2, 1 rows), so joins match, duplicates
  exist, groups have distinct sizes and `ORDER BY COUNT(*)` has no ties; one row per table
  matches nothing, so inner joins, EXCEPT and NOT IN filter something.
* Free columns get distinct values, so MIN/MAX/AVG/SUM and ASC/DESC disagree; a column
  compared with its own average gets a row exactly on it.

Everything is seeded from a stable hash of the example (never Python's `hash()`), and sets are
never iterated while drawing random numbers, so the same example always gets the same tables.
The caller (`sql.py`) checks that the gold result is non-empty and not the whole table, and
retries with the next `attempt` if not.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, traverse_scope

Kind = Literal["int", "real", "text"]
Value = int | float | str | None
ColumnRef = tuple[str, str]
SchemaKinds = dict[str, dict[str, Kind]]

_CREATE_TABLE = re.compile(
    r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?[`\"\[]?([\w.]+)[`\"\]]?\s*\((.*?)\)\s*(?:;|$)",
    re.IGNORECASE | re.DOTALL,
)
_INT_TYPES = ("INT", "INTEGER", "BIGINT", "SMALLINT", "TINYINT", "NUMBER", "NUMERIC")
_REAL_TYPES = ("REAL", "FLOAT", "DOUBLE", "DECIMAL")
_COMPARISONS: dict[type[exp.Expr], str] = {
    exp.EQ: "eq",
    exp.NEQ: "neq",
    exp.GT: "gt",
    exp.GTE: "gte",
    exp.LT: "lt",
    exp.LTE: "lte",
}
_KIND_PRECEDENCE: tuple[Kind, ...] = ("text", "real", "int")
_MIRRORED = {"eq": "eq", "neq": "neq", "gt": "lt", "gte": "lte", "lt": "gt", "lte": "gte"}
_CONSONANTS = "bcdfghklmnprstvz"
_VOWELS = "aeiou"
MAX_PROBE_ROWS = 12


# --------------------------------------------------------------------------- schema


def _declared_kind(type_name: str) -> Kind:
    upper = type_name.upper()
    if upper.startswith(_REAL_TYPES):
        return "real"
    if upper.startswith(_INT_TYPES):
        return "int"
    return "text"


def parse_context(context: str) -> SchemaKinds:
    """Tables and declared column kinds from `CREATE TABLE` statements, names lower-cased
    (SQLite identifiers are case-insensitive). A table declared twice — 106 rows of the
    dataset do it — gets the union of its columns; the first declaration of a column wins."""
    schema: SchemaKinds = {}
    for match in _CREATE_TABLE.finditer(context):
        columns = schema.setdefault(match.group(1).lower(), {})
        for definition in match.group(2).split(","):
            words = definition.strip().split()
            if not words:
                continue
            name = words[0].strip('`"[]').lower()
            columns.setdefault(name, _declared_kind(words[1]) if len(words) > 1 else "text")
    return schema


# --------------------------------------------------------------------------- query profile


@dataclass(frozen=True)
class Atom:
    """One comparison of a column with constants: `ref op values`."""

    ref: ColumnRef
    op: str  # eq neq gt gte lt lte between in like isnull
    values: tuple[Value, ...]


@dataclass
class QueryProfile:
    """What the gold query does to each column: the facts table synthesis needs."""

    atoms: dict[int, Atom] = field(default_factory=dict)  # id(expression node) -> atom
    atom_order: list[Atom] = field(default_factory=list)
    conditions: list[exp.Expr] = field(default_factory=list)  # WHERE trees
    links: list[tuple[ColumnRef, ColumnRef]] = field(default_factory=list)  # equal values
    kind_links: list[tuple[ColumnRef, ColumnRef]] = field(default_factory=list)  # comparable
    ranges: dict[ColumnRef, list[float]] = field(default_factory=dict)  # HAVING AVG(x) > N
    averaged: set[ColumnRef] = field(default_factory=set)  # x > (SELECT AVG(x) FROM t)
    text_refs: set[ColumnRef] = field(default_factory=set)
    numeric_refs: set[ColumnRef] = field(default_factory=set)
    real_refs: set[ColumnRef] = field(default_factory=set)
    grouped: set[ColumnRef] = field(default_factory=set)
    nullable: set[ColumnRef] = field(default_factory=set)
    group_sizes: list[tuple[str, int]] = field(default_factory=list)  # HAVING COUNT(*) op N
    max_join_width: int = 1


def _resolve(column: exp.Column, scope: Scope) -> ColumnRef | None:
    """The base table column a qualified column reads, following correlated references."""
    current: Scope | None = scope
    while current is not None:
        source = current.sources.get(column.table)
        if isinstance(source, exp.Table):
            return source.name.lower(), column.name.lower()
        if source is not None:
            return None  # a derived table: its columns are not base columns
        current = current.parent
    return None


def _resolve_all(query: exp.Expr) -> dict[int, ColumnRef]:
    resolved: dict[int, ColumnRef] = {}
    for scope in traverse_scope(query):
        for column in scope.columns:
            ref = _resolve(column, scope)
            if ref is not None:
                resolved[id(column)] = ref
    return resolved


def _literal_value(node: exp.Expr) -> Value | Literal[False]:
    """The Python value of a constant, or False when the node is not one."""
    if isinstance(node, exp.Paren):
        return _literal_value(node.this)
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and node.this.is_number:
        value = _literal_value(node.this)
        return -value if isinstance(value, int | float) else False
    if not isinstance(node, exp.Literal):
        return False
    if node.is_string:
        return str(node.this)
    number = Decimal(node.this)
    return int(number) if number == number.to_integral_value() else float(number)


def bare_columns(node: exp.Expr) -> list[exp.Column]:
    """Columns of `node` outside aggregates and subqueries."""
    if isinstance(node, exp.Column):
        return [node]
    if isinstance(node, exp.AggFunc | exp.Subquery | exp.Query):
        return []
    return [column for child in node.iter_expressions() for column in bare_columns(child)]


def _unparen(node: exp.Expr) -> exp.Expr:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


class _Profiler:
    """Walks the qualified gold query once and fills a QueryProfile."""

    def __init__(self, query: exp.Expr) -> None:
        self.query = query
        self.resolved = _resolve_all(query)
        self.profile = QueryProfile()

    def ref(self, node: exp.Expr) -> ColumnRef | None:
        node = _unparen(node)
        return self.resolved.get(id(node)) if isinstance(node, exp.Column) else None

    def run(self) -> QueryProfile:
        for select in self.query.find_all(exp.Select):
            self._profile_select(select)
        for operation in self.query.find_all(exp.SetOperation):
            self._profile_set_operation(operation)
        for node in self.query.walk():
            self._profile_node(node)
        return self.profile

    def _profile_select(self, select: exp.Select) -> None:
        where = select.args.get("where")
        if where is not None:
            self.profile.conditions.append(where.this)
        width = 1 + len(select.args.get("joins") or [])
        self.profile.max_join_width = max(self.profile.max_join_width, width)
        group = select.args.get("group")
        for key in group.expressions if group else []:
            ref = self.ref(key)
            if ref:
                self.profile.grouped.add(ref)
        if select.args.get("distinct"):
            self._group_projections(select)
        if select.args.get("group"):
            self._group_bare_columns(select)

    def _group_bare_columns(self, select: exp.Select) -> None:
        """`SELECT T1.name ... GROUP BY T1.id`: SQLite returns any row's name, so name must be
        one value per group, as it is in a real table. Slot-drawn values make it so."""
        order = select.args.get("order")
        targets = list(select.expressions) + (list(order.expressions) if order else [])
        aggregated = {
            self.ref(column)
            for target in targets
            for function in target.find_all(exp.AggFunc)
            for column in function.find_all(exp.Column)
        }
        for target in targets:
            for column in bare_columns(target):
                ref = self.ref(column)
                if ref and ref not in aggregated:  # `SELECT x, MIN(x)`: x must still vary
                    self.profile.grouped.add(ref)

    def _profile_set_operation(self, operation: exp.SetOperation) -> None:
        """INTERSECT/EXCEPT compare the two sides column by column: link those columns."""
        sides = [_unparen(operation.left), _unparen(operation.right)]
        for side in sides:
            if isinstance(side, exp.Select):
                self._group_projections(side)
        if all(isinstance(side, exp.Select) for side in sides):
            left, right = sides[0].expressions, sides[1].expressions
            for left_item, right_item in zip(left, right, strict=False):
                left_ref, right_ref = self.ref(left_item.unalias()), self.ref(right_item.unalias())
                if left_ref and right_ref and left_ref != right_ref:
                    self._link(left_ref, right_ref, equal=True)

    def _group_projections(self, select: exp.Select) -> None:
        """Columns whose duplicates matter (DISTINCT, INTERSECT, EXCEPT, UNION) draw from a
        small domain, so that duplicates exist to be removed or matched."""
        for projection in select.expressions:
            ref = self.ref(projection.unalias())
            if ref:
                self.profile.grouped.add(ref)

    def _add_atom(self, node: exp.Expr, ref: ColumnRef, op: str, values: Iterable[Value]):
        atom = Atom(ref, op, tuple(values))
        self.profile.atoms[id(node)] = atom
        self.profile.atom_order.append(atom)
        self._note_literal_kinds(ref, atom.values, op)

    def _note_literal_kinds(self, ref: ColumnRef, values: tuple[Value, ...], op: str) -> None:
        if op == "like" or any(isinstance(value, str) for value in values):
            self.profile.text_refs.add(ref)
        elif any(isinstance(value, float) for value in values):
            self.profile.real_refs.add(ref)
        elif any(isinstance(value, int) for value in values):
            self.profile.numeric_refs.add(ref)

    def _profile_node(self, node: exp.Expr) -> None:
        if type(node) in _COMPARISONS:
            self._profile_comparison(node, _COMPARISONS[type(node)])
        elif isinstance(node, exp.Between):
            self._profile_between(node)
        elif isinstance(node, exp.In):
            self._profile_in(node)
        elif isinstance(node, exp.Like | exp.ILike):
            self._profile_like(node)
        elif isinstance(node, exp.Is):
            ref = self.ref(node.this)
            if ref and isinstance(node.expression, exp.Null):
                self.profile.nullable.add(ref)
                self._add_atom(node, ref, "isnull", (None,))
        elif isinstance(node, exp.Sum | exp.Avg | exp.Add | exp.Sub | exp.Mul | exp.Div):
            self._mark_numeric(node)
        elif isinstance(node, exp.Count):
            self._profile_count(node)

    def _profile_count(self, node: exp.Count) -> None:
        argument = node.this
        distinct = isinstance(argument, exp.Distinct)
        for operand in argument.expressions if distinct else [argument]:
            ref = self.ref(operand) if operand is not None else None
            if ref:
                self.profile.nullable.add(ref)
                if distinct:
                    self.profile.grouped.add(ref)

    def _mark_numeric(self, node: exp.Expr) -> None:
        for operand in node.iter_expressions():
            ref = self.ref(operand)
            if ref:
                self.profile.numeric_refs.add(ref)

    def _profile_comparison(self, node: exp.Expr, op: str) -> None:
        left, right = _unparen(node.args["this"]), _unparen(node.args["expression"])
        left_ref, right_ref = self.ref(left), self.ref(right)
        if left_ref and right_ref:
            self._link(left_ref, right_ref, equal=op == "eq")
            return
        if right_ref and not left_ref:
            left, right, left_ref, op = right, left, right_ref, _MIRRORED[op]
        if not left_ref:
            self._profile_aggregate_comparison(left, right, op)
            return
        value = _literal_value(right)
        if value is not False and value is not None:
            self._add_atom(node, left_ref, op, (value,))
        elif isinstance(right, exp.Subquery):
            self._profile_scalar_subquery(left_ref, right, op)

    def _link(self, left: ColumnRef, right: ColumnRef, equal: bool) -> None:
        """Equality joins share values; other comparisons only need comparable kinds. A
        column joined with itself (`T1.director = T2.director`) needs duplicates."""
        if left == right:
            if equal:
                self.profile.grouped.add(left)
        elif equal:
            self.profile.links.append((left, right))
        else:
            self.profile.kind_links.append((left, right))

    def _profile_scalar_subquery(self, ref: ColumnRef, subquery: exp.Subquery, op: str) -> None:
        """`x = (SELECT y ... LIMIT 1)` joins x to y; `x > (SELECT AVG(y) ...)` is numeric."""
        inner = _unparen(subquery.this)
        if isinstance(inner, exp.Select) and inner.expressions:
            projected = inner.expressions[0].unalias()
            aggregated = isinstance(projected, exp.AggFunc)
            other = self.ref(projected.this if aggregated else projected)
            if other:
                self._link(ref, other, equal=op == "eq" and not aggregated)
            plain = not inner.args.get("where") and not inner.args.get("joins")
            if other == ref and isinstance(projected, exp.Avg) and plain and op != "eq":
                self.profile.averaged.add(ref)
        if op not in ("eq", "neq"):
            self.profile.numeric_refs.add(ref)

    def _profile_aggregate_comparison(self, left: exp.Expr, right: exp.Expr, op: str) -> None:
        """`HAVING COUNT(*) >= 15` needs a group of 15 rows; `HAVING AVG(x) > 42000` needs
        values of x around 42000."""
        if isinstance(right, exp.AggFunc):
            left, right, op = right, left, _MIRRORED[op]
        value = _literal_value(right)
        if not isinstance(left, exp.AggFunc) or not isinstance(value, int | float):
            return
        if isinstance(left, exp.Count):
            if isinstance(value, int) and 0 < value <= 40:
                self.profile.group_sizes.append((op, value))
            return
        ref = self.ref(left.this) if left.this is not None else None
        if ref:
            self.profile.numeric_refs.add(ref)
            self.profile.ranges.setdefault(ref, []).append(float(value))

    def _profile_between(self, node: exp.Between) -> None:
        ref = self.ref(node.this)
        low, high = _literal_value(node.args["low"]), _literal_value(node.args["high"])
        if ref and low is not False and high is not False and None not in (low, high):
            self._add_atom(node, ref, "between", (low, high))

    def _profile_in(self, node: exp.In) -> None:
        ref = self.ref(node.this)
        if not ref:
            return
        query = node.args.get("query")
        if query is not None:
            inner = _unparen(query.this if isinstance(query, exp.Subquery) else query)
            if isinstance(inner, exp.Select) and inner.expressions:
                other = self.ref(inner.expressions[0].unalias())
                if other:
                    self._link(ref, other, equal=True)
            return
        values = [_literal_value(item) for item in node.expressions]
        constants = [value for value in values if value is not False and value is not None]
        if values and len(constants) == len(values):
            self._add_atom(node, ref, "in", constants)

    def _profile_like(self, node: exp.Expr) -> None:
        ref = self.ref(node.this)
        pattern = _literal_value(node.expression)
        if ref and isinstance(pattern, str):
            self._add_atom(node, ref, "like", (pattern,))


def profile_query(qualified: exp.Expr) -> QueryProfile:
    """Profile a query already qualified by sqlglot (every column names its source)."""
    return _Profiler(qualified).run()


# --------------------------------------------------------------------------- column kinds


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[ColumnRef, ColumnRef] = {}

    def find(self, ref: ColumnRef) -> ColumnRef:
        self.parent.setdefault(ref, ref)
        while self.parent[ref] != ref:
            self.parent[ref] = self.parent[self.parent[ref]]
            ref = self.parent[ref]
        return ref

    def union(self, left: ColumnRef, right: ColumnRef) -> None:
        roots = sorted((self.find(left), self.find(right)))
        self.parent[roots[1]] = roots[0]

    def classes(self) -> list[list[ColumnRef]]:
        groups: dict[ColumnRef, list[ColumnRef]] = {}
        for ref in sorted(self.parent):
            groups.setdefault(self.find(ref), []).append(ref)
        return [members for members in groups.values() if len(members) > 1]


def _evidence_kind(ref: ColumnRef, profile: QueryProfile) -> Kind | None:
    if ref in profile.text_refs:
        return "text"
    if ref in profile.real_refs:
        return "real"
    if ref in profile.numeric_refs:
        return "int"
    return None


def _class_kind(members: list[ColumnRef], profile: QueryProfile, schema: SchemaKinds) -> Kind:
    """Joined columns must hold comparable values: text evidence wins, then numeric evidence,
    then an INTEGER declaration of any member."""
    evidence = {_evidence_kind(ref, profile) for ref in members}
    for kind in _KIND_PRECEDENCE:
        if kind in evidence:
            return kind
    declared = {schema.get(table, {}).get(column) for table, column in members}
    return "int" if "int" in declared else "text"


def _unify_compared_kinds(kinds: SchemaKinds, profile: QueryProfile) -> None:
    """`T2.balance > T3.balance`: one kind for both sides, from usage evidence first."""
    for left, right in profile.kind_links:
        pair = [kinds.get(ref[0], {}).get(ref[1]) for ref in (left, right)]
        if None in pair or pair[0] == pair[1]:
            continue
        evidence = [_evidence_kind(ref, profile) for ref in (left, right)]
        chosen = [k for k in evidence if k is not None] or [k for k in pair if k and k != "text"]
        kind: Kind = chosen[0] if chosen else "text"
        for table, column in (left, right):
            kinds[table][column] = kind


def infer_kinds(
    schema: SchemaKinds, profile: QueryProfile
) -> tuple[SchemaKinds, list[list[ColumnRef]]]:
    """Final column kinds and the classes of columns joined by equality."""
    kinds: SchemaKinds = {}
    for table, columns in schema.items():
        kinds[table] = {
            column: _evidence_kind((table, column), profile) or declared
            for column, declared in columns.items()
        }
    _unify_compared_kinds(kinds, profile)
    links = _UnionFind()
    for left, right in profile.links:
        links.union(left, right)
    classes = [
        [ref for ref in members if ref[0] in kinds and ref[1] in kinds[ref[0]]]
        for members in links.classes()
    ]
    classes = [members for members in classes if len(members) > 1]
    for members in classes:
        kind = _class_kind(members, profile, schema)
        for table, column in members:
            kinds[table][column] = kind
    return kinds, classes


# --------------------------------------------------------------------------- atom semantics


def _comparable(left: Value, right: Value) -> tuple[Value, Value]:
    """Mixed number/text comparisons go as text, as SQLite does for a TEXT column."""
    if isinstance(left, str) != isinstance(right, str):
        return str(left), str(right)
    return left, right


def like_matches(value: str, pattern: str) -> bool:
    """SQLite LIKE: `%` any run, `_` one character, ASCII case-insensitive."""
    regex = "".join(
        ".*" if char == "%" else "." if char == "_" else re.escape(char) for char in pattern
    )
    return re.fullmatch(regex, value, re.DOTALL | re.IGNORECASE) is not None


def atom_holds(atom: Atom, value: Value) -> bool:
    """Whether a row with `value` in the atom's column satisfies it (NULL satisfies nothing
    but IS NULL)."""
    if atom.op == "isnull":
        return value is None
    if value is None:
        return False
    if atom.op == "like":
        return like_matches(str(value), str(atom.values[0]))
    if atom.op == "in":
        return any(_compare("eq", value, candidate) for candidate in atom.values)
    if atom.op == "between":
        return _compare("gte", value, atom.values[0]) and _compare("lte", value, atom.values[1])
    return _compare(atom.op, value, atom.values[0])


def _compare(op: str, left: Value, right: Value) -> bool:
    left, right = _comparable(left, right)
    try:
        if op == "eq":
            return left == right
        if op == "neq":
            return left != right
        if op == "gt":
            return left > right  # type: ignore[operator]
        if op == "gte":
            return left >= right  # type: ignore[operator]
        if op == "lt":
            return left < right  # type: ignore[operator]
        return left <= right  # type: ignore[operator]
    except TypeError:
        return False


def _wanted_atoms(
    condition: exp.Expr, profile: QueryProfile, want: bool, choice: int
) -> Iterator[tuple[Atom, bool]]:
    """Atoms whose truth makes `condition` evaluate to `want`; OR picks one branch by
    `choice`, so different rows (and attempts) satisfy different branches."""
    node = _unparen(condition)
    atom = profile.atoms.get(id(node))
    if atom is not None:
        negated = isinstance(node, exp.Like) and bool(node.args.get("negate"))
        yield atom, want != negated
    elif isinstance(node, exp.Not):
        yield from _wanted_atoms(node.this, profile, not want, choice)
    elif isinstance(node, exp.And | exp.Or):
        all_needed = isinstance(node, exp.And) == want
        branches = list(node.flatten())
        chosen = branches if all_needed else [branches[choice % len(branches)]]
        for branch in chosen:
            yield from _wanted_atoms(branch, profile, want, choice)


# --------------------------------------------------------------------------- values


def _coerce(value: Value, kind: Kind) -> Value:
    """A literal as the column stores it: `student_id = 171` on a text column stores '171'."""
    if value is None:
        return None
    if kind == "text":
        return value if isinstance(value, str) else str(value)
    if isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except ArithmeticError:
            return value
        return int(number) if kind == "int" and number == int(number) else float(number)
    return int(value) if kind == "int" and float(value).is_integer() else value


def _text_neighbour(text: str, step: int) -> str | None:
    """The string just after (step=1) or before (step=-1) `text` in code-point order, e.g.
    '2005-08-23' -> '2005-08-24'."""
    if not text:
        return "a" if step > 0 else None
    code = ord(text[-1]) + step
    if code <= 32:
        return None
    return text[:-1] + chr(code)


def _fill_like(pattern: str, filler: str) -> str:
    return pattern.replace("%", filler).replace("_", "x")


class _ValueSource:
    """Fresh, per-column distinct values from one seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: dict[ColumnRef, set[Value]] = {}

    def word(self) -> str:
        syllables = self.rng.randint(2, 3)
        letters = [
            self.rng.choice(_CONSONANTS) + self.rng.choice(_VOWELS) for _ in range(syllables)
        ]
        return "".join(letters).capitalize()

    def number(self, kind: Kind, around: list[float]) -> int | float:
        if around:
            low, high = min(around) - 25, max(around) + 25
        else:
            low, high = 1, 100
        if kind == "real":
            return round(self.rng.uniform(low, high), 1)
        return self.rng.randint(int(low), int(high))

    def fresh(self, ref: ColumnRef, kind: Kind, around: list[float]) -> Value:
        used = self.used.setdefault(ref, set())
        value: Value = None
        for _ in range(50):
            value = self.word() if kind == "text" else self.number(kind, around)
            if value not in used:
                break
        used.add(value)
        return value


def _numeric_probes(atom: Atom, kind: Kind) -> list[Value]:
    values = [_coerce(value, kind) for value in atom.values]
    numbers = [value for value in values if isinstance(value, int | float)]
    if atom.op == "between" and len(numbers) == 2:
        low, high = numbers
        middle = (low + high) // 2 if kind == "int" else (low + high) / 2
        return [low - 1, low, middle, high, high + 1]
    if atom.op == "in":
        return [*numbers, max(numbers) + 1] if numbers else []
    return [number + delta for number in numbers for delta in (0, -1, 1)]


def _text_probes(atom: Atom, values: _ValueSource) -> list[Value]:
    texts = [str(value) for value in atom.values]
    if atom.op == "like":
        pattern = texts[0]
        return [_fill_like(pattern, ""), _fill_like(pattern, values.word()), values.word()]
    if atom.op == "between":
        low, high = texts
        return [_text_neighbour(low, -1), low, high, _text_neighbour(high, 1)]
    if atom.op == "in":
        return [*texts, _text_neighbour(texts[0], 1)]
    neighbours = [_text_neighbour(texts[0], -1), _text_neighbour(texts[0], 1)]
    if atom.op in ("eq", "neq"):
        return [texts[0], neighbours[1], values.word()]
    return [neighbours[0], texts[0], neighbours[1]]


def probe_values(atom: Atom, kind: Kind, values: _ValueSource) -> list[Value]:
    """The literal and its near misses, in the column's kind."""
    if atom.op == "isnull":
        return [None]
    probes = _text_probes(atom, values) if kind == "text" else _numeric_probes(atom, kind)
    return [probe for probe in probes if probe is not None]


# --------------------------------------------------------------------------- synthesis


@dataclass
class Database:
    """Synthesised tables: column names and kinds in schema order, rows as tuples."""

    kinds: SchemaKinds
    rows: dict[str, list[tuple[Value, ...]]]

    def columns(self, table: str) -> tuple[str, ...]:
        return tuple(self.kinds[table])


def example_seed(*parts: str) -> int:
    """A seed that depends only on the example's text (stable across runs and machines)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass
class _RowPlan:
    slot: int | None  # index into shared domains; None = a value that matches nothing
    choice: int  # which OR branch (and which of conflicting conditions) this row satisfies
    probe: tuple[ColumnRef, Value] | None = None
    satisfy: bool = True
    nulls: bool = False  # NULL in the columns where the query counts or tests NULLs


Requirements = dict[ColumnRef, list[tuple[Atom, bool]]]


class _Synthesizer:
    """Builds the rows of every table for one attempt.

    Slots: rows that should join carry the same slot, and every column shared by a join (or
    grouped, or compared across INTERSECT) takes the slot's value from a small domain. Slots
    0, 1, 2 hold satisfying rows, 3, 2 and 1 of them. Every near-miss row gets a slot of its
    own, with a satisfying companion row in every other table: joined, grouped or DISTINCT,
    its effect on the result cannot hide behind other rows. None is a value no other row has.
    """

    def __init__(
        self,
        kinds: SchemaKinds,
        classes: list[list[ColumnRef]],
        profile: QueryProfile,
        rng: random.Random,
        attempt: int,
    ) -> None:
        self.kinds = kinds
        self.profile = profile
        self.attempt = attempt
        self.values = _ValueSource(rng)
        self.rng = rng
        self.class_of = {ref: index for index, members in enumerate(classes) for ref in members}
        self.atoms_by_ref: dict[ColumnRef, list[Atom]] = {}
        for atom in profile.atom_order:
            if atom not in self.atoms_by_ref.setdefault(atom.ref, []):
                self.atoms_by_ref[atom.ref].append(atom)
        self.numbers_around = {
            ref: [float(v) for a in atoms for v in a.values if isinstance(v, int | float)]
            for ref, atoms in self.atoms_by_ref.items()
        }
        for ref, numbers in profile.ranges.items():
            self.numbers_around.setdefault(ref, []).extend(numbers)
        self.condition_requirements: dict[int, list[Requirements]] = {}
        self.fitting_cache: dict[tuple[ColumnRef, int], list[Value]] = {}
        self.violation_cache: dict[tuple[ColumnRef, Value], bool] = {}
        self.probes = {ref: self._probes(ref) for ref in self.atoms_by_ref}
        self.candidates = {ref: self._with_fresh(ref) for ref in self.atoms_by_ref}
        self.probe_slots = self._probe_slots()
        self.unshared_slot = 3 + len(self.probe_slots)
        self.table_index = {table: index for index, table in enumerate(sorted(kinds))}
        self.unique_tables = self._unique_tables(classes)
        self.class_domains = [self._class_domain(members) for members in classes]
        self.group_domains: dict[ColumnRef, list[Value]] = {}

    def kind(self, ref: ColumnRef) -> Kind:
        return self.kinds[ref[0]][ref[1]]

    def _unique_tables(self, classes: list[list[ColumnRef]]) -> set[str]:
        """Tables on the "one" side of a join: grouped by a joined column (`GROUP BY T1.id`
        joined to T2). One row per slot there, the skew on the other side, so that group
        counts come out 3, 2, 1 and the other columns of T1 are one value per group."""
        unique: set[str] = set()
        for members in classes:
            grouped = {
                table for table, column in members if (table, column) in self.profile.grouped
            }
            others = {table for table, _ in members} - grouped
            if grouped and others:
                unique |= grouped
        return unique

    # ----------------------------------------------------------------- candidate values

    def _probes(self, ref: ColumnRef) -> list[Value]:
        probes: list[Value] = []
        for atom in self.atoms_by_ref[ref]:
            for probe in probe_values(atom, self.kind(ref), self.values):
                if probe not in probes:
                    probes.append(probe)
        return probes

    def _probe_slots(self) -> dict[tuple[ColumnRef, Value], int]:
        """A slot for each near miss (at most MAX_PROBE_ROWS per table), in schema order."""
        slots: dict[tuple[ColumnRef, Value], int] = {}
        for table in self.kinds:
            probes = [
                (ref, v) for ref, values in self.probes.items() if ref[0] == table for v in values
            ]
            for probe in probes[:MAX_PROBE_ROWS]:
                slots[probe] = 3 + len(slots)
        return slots

    def _with_fresh(self, ref: ColumnRef) -> list[Value]:
        """Probes first, then fresh values so that open ranges (`> 56`) get varied rows."""
        probes = self.probes[ref]
        around = self.numbers_around.get(ref, [])
        fresh = [self.values.fresh(ref, self.kind(ref), around) for _ in range(6)]
        return probes + [value for value in fresh if value not in probes]

    def _fresh(self, ref: ColumnRef) -> Value:
        return self.values.fresh(ref, self.kind(ref), self.numbers_around.get(ref, []))

    # ----------------------------------------------------------------- requirements

    def _requirements(self, choice: int) -> list[Requirements]:
        """Per WHERE clause, the atoms (and truth values) that make it true for this choice."""
        cached = self.condition_requirements.get(choice)
        if cached is None:
            cached = []
            for condition in self.profile.conditions:
                wanted: Requirements = {}
                for atom, truth in _wanted_atoms(condition, self.profile, True, choice):
                    wanted.setdefault(atom.ref, []).append((atom, truth))
                cached.append(wanted)
            self.condition_requirements[choice] = cached
        return cached

    def _satisfying(self, ref: ColumnRef, choice: int, index: int = 0) -> Value:
        """The index-th candidate meeting every requirement on `ref`."""
        key = (ref, choice)
        fitting = self.fitting_cache.get(key)
        if fitting is None:
            fitting = self.fitting_cache[key] = self._fitting(ref, choice)
        return fitting[index % len(fitting)] if fitting else None

    def _fitting(self, ref: ColumnRef, choice: int) -> list[Value]:
        """Candidates meeting every requirement on `ref`. When the clauses of the query
        contradict each other (`x = 'Milk' ... INTERSECT ... x = 'Cat'`), rows take turns
        satisfying one clause each, so that both kinds of row exist."""
        candidates = self.candidates.get(ref, [])
        per_clause = [r[ref] for r in self._requirements(choice) if ref in r]
        alternatives = [[pair for r in per_clause for pair in r]]
        if per_clause:
            alternatives.append(per_clause[choice % len(per_clause)])
        for requirements in alternatives:
            fitting = [
                value
                for value in candidates
                if all(atom_holds(atom, value) == truth for atom, truth in requirements)
            ]
            if fitting:
                return fitting
        return candidates

    def _evaluate(self, node: exp.Expr, lookup: dict[ColumnRef, Value]) -> bool:
        """A WHERE clause on one row: atoms on `lookup`'s columns are evaluated, anything else
        (joins, subqueries, other columns) is taken as satisfied."""
        node = _unparen(node)
        atom = self.profile.atoms.get(id(node))
        if atom is not None:
            if atom.ref not in lookup:
                return True
            negated = isinstance(node, exp.Like) and bool(node.args.get("negate"))
            return atom_holds(atom, lookup[atom.ref]) != negated
        if isinstance(node, exp.Not):
            inner = _unparen(node.this)
            if self._mentions(inner, lookup):
                return not self._evaluate(inner, lookup)
            return True
        if isinstance(node, exp.And):
            return all(self._evaluate(part, lookup) for part in node.flatten())
        if isinstance(node, exp.Or):
            return any(self._evaluate(part, lookup) for part in node.flatten())
        return True

    def _mentions(self, node: exp.Expr, lookup: dict[ColumnRef, Value]) -> bool:
        return any(
            atom.ref in lookup
            for child in node.walk()
            if (atom := self.profile.atoms.get(id(child))) is not None
        )

    def _violates(self, ref: ColumnRef, value: Value) -> bool:
        """Whether a satisfying row with `value` in `ref` fails some WHERE clause."""
        key = (ref, value)
        if key not in self.violation_cache:
            self.violation_cache[key] = self._check_violation(ref, value)
        return self.violation_cache[key]

    def _check_violation(self, ref: ColumnRef, value: Value) -> bool:
        table = ref[0]
        lookup = {
            other: self._satisfying(other, self.attempt)
            for other in self.candidates
            if other[0] == table
        }
        lookup[ref] = value
        return any(
            not self._evaluate(condition, lookup)
            for condition in self.profile.conditions
            if self._mentions(condition, {ref: value})
        )

    # ----------------------------------------------------------------- shared domains

    def _class_domain(self, members: list[ColumnRef]) -> list[Value]:
        """Values of joined columns by slot. A joined column that also has a condition puts its
        satisfying value in slot 0 and each near miss in the near miss's slot, so all join."""
        kind = self.kind(members[0])
        size = self.unshared_slot + 1
        domain: list[Value] = [None] * size
        for ref in members:
            if ref in self.candidates and domain[0] is None:
                domain[0] = _coerce(self._satisfying(ref, self.attempt), kind)
        for (ref, value), slot in self.probe_slots.items():
            if ref in members and domain[slot] is None:
                domain[slot] = _coerce(value, kind)
        for slot in range(size):
            while domain[slot] is None or domain[slot] in domain[:slot]:
                domain[slot] = self.values.fresh(members[0], kind, [])
        return domain

    def _slot_for(self, ref: ColumnRef, slot: int) -> int:
        """From the third attempt on, slot 2 of each table's join keys is its own, so that some
        rows of each table join nothing (EXCEPT, NOT IN and outer-join-like questions)."""
        if slot == 2 and self.attempt >= 2:
            return self.unshared_slot + 1 + self.table_index[ref[0]]
        return slot

    def _domain_value(self, ref: ColumnRef, slot: int | None) -> Value:
        if slot is None:
            return self._fresh(ref)
        if ref in self.class_of:
            domain = self.class_domains[self.class_of[ref]]
            slot = self._slot_for(ref, slot)
        else:
            domain = self.group_domains.setdefault(ref, [])
        while len(domain) <= slot:
            value = self.values.fresh(ref, self.kind(ref), [])
            domain.append(value if value not in domain else self._fresh(ref))
        return domain[slot]

    # ----------------------------------------------------------------- rows

    def _value(self, ref: ColumnRef, plan: _RowPlan, row_index: int) -> Value:
        if plan.probe is not None and plan.probe[0] == ref:
            return plan.probe[1]
        if plan.nulls and ref in self.profile.nullable and ref not in self.candidates:
            return None  # COUNT(col) vs COUNT(*): one NULL in a satisfying row tells them apart
        if ref in self.candidates:
            if plan.satisfy:
                return self._satisfying(ref, plan.choice, row_index)
            return self.rng.choice(self.candidates[ref])
        if ref in self.class_of or ref in self.profile.grouped:
            return self._domain_value(ref, plan.slot)
        return self._fresh(ref)

    def _largest_group(self) -> int:
        """Rows in slot 0: enough for every `HAVING COUNT(*) op N`, on the boundary if it can."""
        sizes = self.profile.group_sizes
        for size in [n + delta for _, n in sizes for delta in (0, 1, -1)]:
            if size > 0 and all(_compare(op, size, n) for op, n in sizes):
                return size
        return 3

    def _plans(self, table: str) -> list[_RowPlan]:
        """Satisfying rows with skewed slots, companions for other tables' near misses, one
        probe row per near miss, one row with random values, one that joins nothing. On odd
        attempts the violating near misses outnumber the rest, so that a dropped condition
        also changes `ORDER BY COUNT(*) ... LIMIT 1` and MAX/MIN."""
        wide = self.profile.max_join_width >= 3
        if table in self.unique_tables:
            slots = [0, 1, 2]
        else:
            slots = [0, 0, 1] if wide else [0, 0, 0, 1, 1, 2]
            slots = [0] * (self._largest_group() - slots.count(0)) + slots
        slots += [slot for (ref, _), slot in self.probe_slots.items() if ref[0] != table]
        plans = [_RowPlan(slot, self.attempt + index) for index, slot in enumerate(slots)]
        plans[1].nulls = True
        probes = [probe for probe in self.probe_slots if probe[0][0] == table]
        violating = [probe for probe in probes if self._violates(*probe)]
        copies = -(-8 // len(violating)) if violating and self.attempt % 2 else 1
        for probe in probes:
            slot = self.probe_slots[probe]
            plans += [_RowPlan(slot, self.attempt, probe)] * (copies if probe in violating else 1)
        plans.append(_RowPlan(0, self.attempt, satisfy=False))
        plans.append(_RowPlan(None, self.attempt, satisfy=False))
        return plans

    def table_rows(self, table: str) -> list[tuple[Value, ...]]:
        columns = list(self.kinds[table])
        rows = [
            [self._value((table, column), plan, index) for column in columns]
            for index, plan in enumerate(self._plans(table))
        ]
        for index, column in enumerate(columns):
            if (table, column) in self.profile.averaged and self.kind((table, column)) != "text":
                _plant_average(rows, index)
        return [tuple(row) for row in rows]


def _plant_average(rows: list[list[Value]], index: int) -> None:
    """Make one row hold exactly the column's average, so `x > (SELECT AVG(x) ...)` and
    `x >= (...)` differ. Row 1's value becomes the mean of the others (which leaves the mean
    unchanged); for integers row 2 is nudged first so that the mean is whole."""
    holders = [row for row in rows if isinstance(row[index], int | float)]
    if len(holders) < 3:
        return
    target, nudged, others = holders[1], holders[2], holders[:1] + holders[2:]
    total = sum(float(row[index]) for row in others)  # type: ignore[arg-type,misc]
    if all(isinstance(row[index], int) for row in others):
        remainder = int(total) % len(others)
        if remainder:
            nudged[index] = int(nudged[index]) + len(others) - remainder  # type: ignore[arg-type]
            total += len(others) - remainder
        target[index] = int(total) // len(others)
    else:
        target[index] = total / len(others)


def synthesize(schema: SchemaKinds, profile: QueryProfile, seed: int, attempt: int = 0) -> Database:
    """Tables for every table in `schema` (the augmented one), seeded by `seed` + `attempt`."""
    kinds, classes = infer_kinds(schema, profile)
    rng = random.Random(seed + attempt * 7919)
    synthesizer = _Synthesizer(kinds, classes, profile, rng, attempt)
    rows = {table: synthesizer.table_rows(table) for table in kinds}
    return Database(kinds, rows)
