"""A SQL WHERE clause over a result table's columns, parsed by sqlglot into one pyarrow filter expression."""

from __future__ import annotations

import difflib
import operator
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.tokens import Tokenizer

from sdbatch.errors import UsageError

EXAMPLE = "e.g. status = 'ok' and clip_score > 0.25"
SUPPORTED = "comparisons, AND/OR/NOT, IS [NOT] NULL, [NOT] IN (...), [NOT] BETWEEN, [NOT] LIKE/ILIKE and + - * /"
SHOWN_COLUMNS = 20  # a wide table's column list is cut to this many in a message
_NONE = object()  # no constant: the value is a column or computed
_NULL_BOOL, _NULL_FLOAT = pc.scalar(pa.scalar(None, pa.bool_())), pc.scalar(pa.scalar(None, pa.float64()))
_COMPARE = {exp.EQ: operator.eq, exp.NEQ: operator.ne, exp.GT: operator.gt, exp.GTE: operator.ge,
            exp.LT: operator.lt, exp.LTE: operator.le}
_ARITHMETIC = {exp.Add: pc.add_checked, exp.Sub: pc.subtract_checked, exp.Mul: pc.multiply_checked}


class WhereError(UsageError):
    """A WHERE clause that cannot filter results; the message names the problem and the fix."""


class _WhereDialect(Dialect):
    class Tokenizer(Tokenizer):
        IDENTIFIERS = ['"', "`"]  # label columns with odd names: "my label" as in SQL, `my label` as in Spark


@dataclass(frozen=True)
class _Value:
    expr: pc.Expression
    kind: str  # number, string, boolean, time, null, or other (lists, structs, bytes: only IS NULL)
    shown: str
    type: pa.DataType | None = None  # a column's
    constant: object = _NONE  # a literal's Python value

    def described(self) -> str:
        return f"column {self.shown} ({self.type})" if self.type is not None else f"{self.shown} (a {self.kind})"


def where_expression(text: str, schema: pa.Schema) -> pc.Expression:
    """The filter a SQL WHERE clause (without the word WHERE) means over tables of `schema`; WhereError naming
    the problem and the fix otherwise."""
    try:
        value = _condition(_Compiler(schema).value(_parse(text)))
    except RecursionError:  # sqlglot's or ours, on thousands of parentheses
        raise WhereError("the WHERE clause is nested too deeply: write it with fewer parentheses") from None
    try:  # binding on no rows finds what the kinds above let through (a type pyarrow cannot compare)
        schema.empty_table().filter(value.expr)
    except pa.ArrowException as exc:
        raise WhereError(f"the WHERE clause cannot run on these columns: {_cut(str(exc))}") from None
    return value.expr


def _parse(text: str) -> exp.Expression:
    if not isinstance(text, str):
        raise WhereError(f"the WHERE clause must be text, not {type(text).__name__}: {EXAMPLE}")
    try:
        statements = [s for s in sqlglot.parse(text, read=_WhereDialect) if s is not None]
    except sqlglot.errors.ParseError as exc:
        raise WhereError(_syntax(exc)) from None
    except RecursionError:
        raise
    except Exception as exc:  # the parser is not ours: whatever it raises on odd text is the clause's syntax
        raise WhereError(f"cannot read the WHERE clause ({_cut(str(exc))}): check that every quote is closed, "
                         f"'...' for text and \"...\" or `...` for column names") from None
    if not statements:
        raise WhereError(f"the WHERE clause is empty: write a condition, {EXAMPLE}")
    if len(statements) > 1:
        raise WhereError("the WHERE clause holds more than one statement: drop the ';' and what follows it, "
                         "and join conditions with AND / OR")
    return statements[0]


def _syntax(exc: sqlglot.errors.ParseError) -> str:
    first = exc.errors[0] if exc.errors else {}
    where = f" near {_cut(first.get('highlight') or '', 30)!r} (column {first.get('col')})" if first else ""
    what = _cut(re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", first.get("description") or str(exc)), 80)
    return f"cannot parse the WHERE clause{where}: {what}; fix the SQL, {EXAMPLE}"


class _Compiler:
    def __init__(self, schema: pa.Schema):
        self.schema = schema

    def value(self, node: exp.Expression) -> _Value:
        while isinstance(node, exp.Paren):
            node = node.this
        if type(node) not in _HANDLERS:
            raise WhereError(_unsupported(node))
        return _HANDLERS[type(node)](self, node)

    def column(self, node: exp.Column) -> _Value:
        if node.table or not isinstance(node.this, exp.Identifier):
            raise WhereError(f"{_sql(node)}: name a column alone, without a table or '*', {EXAMPLE}")
        name = self._resolve(node.this)
        if len(self.schema.get_all_field_indices(name)) > 1:
            raise WhereError(f"column {_name(name)} appears more than once in these results: it cannot be filtered on")
        type_, expr = self.schema.field(name).type, pc.field(name)
        if pa.types.is_dictionary(type_):  # compared as the values it encodes
            type_ = type_.value_type
            expr = expr.cast(type_)
        return _Value(expr, _kind(type_), _name(name), type_)

    def _resolve(self, ident: exp.Identifier) -> str:
        name, names = ident.this, self.schema.names
        if name in names:
            return name
        folded = [n for n in names if n.lower() == name.lower()]
        if not ident.quoted and len(folded) == 1:  # unquoted SQL names ignore case
            return folded[0]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6) or folded
        hint = f"did you mean {' or '.join(map(_name, close))}? " if close else ""
        shown = ", ".join(map(_name, names[:SHOWN_COLUMNS]))
        more = f" and {len(names) - SHOWN_COLUMNS} more" if len(names) > SHOWN_COLUMNS else ""
        text = " (text values take single quotes: 'x')" if ident.quoted else ""
        raise WhereError(f"unknown column {_name(name)} in the WHERE clause{text}: {hint}"
                         f"the columns are {shown}{more}")

    def literal(self, node: exp.Expression) -> _Value:
        if isinstance(node, exp.Null):
            return _Value(_NULL_BOOL, "null", "NULL", constant=None)  # typed: NOT NULL and NULL AND x still bind
        if isinstance(node, exp.Boolean):
            return _constant(node.this, "boolean", _sql(node))
        if node.is_string:
            return _constant(node.this, "string", _sql(node))
        return _constant(_number(node.this), "number", node.this)

    def negate(self, node: exp.Neg) -> _Value:
        operand = self.value(node.this)
        if operand.kind == "null":
            return operand
        if operand.kind != "number":
            raise WhereError(f"cannot negate {operand.described()}: '-' takes a number")
        if operand.constant is not _NONE:
            return _constant(-operand.constant, "number", f"-{operand.shown}")
        return _Value(pc.negate_checked(operand.expr), "number", _sql(node))

    def arithmetic(self, node: exp.Expression) -> _Value:
        left, right = self.value(node.this), self.value(node.expression)
        for side in (left, right):
            if side.kind not in ("number", "null"):
                raise WhereError(f"cannot compute {_sql(node)}: {side.described()} is not a number; "
                                 "+ - * / take numeric columns and numbers")
        if "null" in (left.kind, right.kind):  # SQL: arithmetic with NULL is NULL
            return _Value(_NULL_FLOAT, "number", _sql(node))
        if isinstance(node, exp.Div):  # a fraction even of integers; x / 0 is NULL, not an error mid-scan
            quotient = pc.divide(left.expr.cast(pa.float64()), right.expr.cast(pa.float64()))
            expr = pc.if_else(right.expr != 0, quotient, _NULL_FLOAT)
        else:
            expr = _ARITHMETIC[type(node)](left.expr, right.expr)
        return _Value(expr, "number", _sql(node))

    def compare(self, node: exp.Expression) -> _Value:
        left, right = self.value(node.this), self.value(node.expression)
        return _compared(_COMPARE[type(node)], left, right, _sql(node))

    def between(self, node: exp.Between) -> _Value:
        subject, sql = self.value(node.this), _sql(node)
        low, high = self.value(node.args["low"]), self.value(node.args["high"])
        at_least, at_most = _compared(operator.ge, subject, low, sql), _compared(operator.le, subject, high, sql)
        return _Value(at_least.expr & at_most.expr, "boolean", sql)

    def logic(self, node: exp.Expression) -> _Value:
        left, right = _condition(self.value(node.this)), _condition(self.value(node.expression))
        both = left.expr & right.expr if isinstance(node, exp.And) else left.expr | right.expr  # Kleene, as SQL
        return _Value(both, "boolean", _sql(node))

    def not_(self, node: exp.Not) -> _Value:
        return _Value(~_condition(self.value(node.this)).expr, "boolean", _sql(node))

    def is_(self, node: exp.Is) -> _Value:
        subject, test = self.value(node.this), node.expression
        if isinstance(test, exp.Null):
            return _Value(subject.expr.is_null(), "boolean", _sql(node))
        if isinstance(test, exp.Boolean):
            truth = _condition(subject).expr if test.this else ~_condition(subject).expr
            return _Value(pc.coalesce(truth, pc.scalar(False)), "boolean", _sql(node))
        raise WhereError(f"{_sql(node)}: IS takes NULL, TRUE or FALSE; compare values with =")

    def in_(self, node: exp.In) -> _Value:
        if any(node.args.get(arg) for arg in ("query", "unnest", "field")) or not node.expressions:
            raise WhereError(f"{_sql(node)}: IN takes a list of values, e.g. seed IN (1, 2, 3); subqueries "
                             "are not supported")
        subject, values = self.value(node.this), [self.value(v) for v in node.expressions]
        if subject.kind == "null":
            return _Value(_NULL_BOOL, "boolean", _sql(node))
        for value in values:
            if value.constant is _NONE:
                raise WhereError(f"{_sql(node)}: IN takes values, not {value.shown}; compare columns with =")
        present = [_comparable(subject, v, _sql(node))[1] for v in values if v.kind != "null"]
        subject, value_set = _value_set(subject, [v.constant for v in present])
        hit = pc.if_else(subject.expr.is_valid(), pc.is_in(subject.expr, value_set=value_set), _NULL_BOOL)
        if len(present) < len(values):  # x IN (1, NULL) is NULL, not false, where x is not 1
            hit = hit | _NULL_BOOL
        return _Value(hit, "boolean", _sql(node))

    def like(self, node: exp.Expression) -> _Value:
        subject, pattern = self.value(node.this), self.value(node.expression)
        if subject.kind not in ("string", "null"):
            raise WhereError(f"{_sql(node)}: LIKE takes a text column, and {subject.described()} is not one")
        if pattern.kind == "null" or subject.kind == "null":
            return _Value(_NULL_BOOL, "boolean", _sql(node))
        if pattern.kind != "string" or pattern.constant is _NONE:
            raise WhereError(f"{_sql(node)}: the pattern of LIKE must be quoted text, e.g. prompt LIKE '%fox%'")
        matched = pc.match_like(subject.expr, pattern=pattern.constant, ignore_case=isinstance(node, exp.ILike))
        return _Value(~matched if node.args.get("negate") else matched, "boolean", _sql(node))


_HANDLERS = {
    exp.Column: _Compiler.column, exp.Literal: _Compiler.literal,
    exp.Boolean: _Compiler.literal, exp.Null: _Compiler.literal, exp.Neg: _Compiler.negate,
    exp.Between: _Compiler.between, exp.And: _Compiler.logic, exp.Or: _Compiler.logic, exp.Not: _Compiler.not_,
    exp.Is: _Compiler.is_, exp.In: _Compiler.in_, exp.Like: _Compiler.like, exp.ILike: _Compiler.like,
    exp.Div: _Compiler.arithmetic,
    **dict.fromkeys(_COMPARE, _Compiler.compare), **dict.fromkeys(_ARITHMETIC, _Compiler.arithmetic),
}


def _compared(op, left: _Value, right: _Value, sql: str) -> _Value:
    if "null" in (left.kind, right.kind):  # always NULL: keeps no row, which nobody means
        other = right if left.kind == "null" else left
        raise WhereError(f"{sql} keeps no row (a comparison with NULL is NULL): write {other.shown} IS NULL "
                         f"or {other.shown} IS NOT NULL")
    left, right = _comparable(left, right, sql)
    return _Value(op(left.expr, right.expr), "boolean", sql)


def _comparable(left: _Value, right: _Value, sql: str) -> tuple[_Value, _Value]:
    """The two sides, a text constant beside a date or time column read as one; WhereError if they differ."""
    if left.kind == right.kind and left.kind != "other":
        return left, right
    if {left.kind, right.kind} == {"time", "string"}:
        if right.kind == "time" and left.constant is not _NONE:
            return _as_time(left, right), right
        if left.kind == "time" and right.constant is not _NONE:
            return left, _as_time(right, left)
    if "other" in (left.kind, right.kind):
        column = left if left.kind == "other" else right
        raise WhereError(f"{sql}: {column.described()} cannot be compared; test it with IS NULL or IS NOT NULL")
    raise WhereError(f"{sql}: cannot compare {left.described()} with {right.described()}; {_fix(left, right)}")


def _fix(left: _Value, right: _Value) -> str:
    column, other = (left, right) if left.type is not None else (right, left)
    if column.type is not None and other.constant is not _NONE:
        if column.kind == "string" and other.kind == "number":
            return f"quote the value: '{other.shown}'"
        if column.kind == "number" and other.kind == "string" and _number(other.constant.strip()) is not None:
            return f"drop the quotes: {other.constant}"
    return "compare values of one kind (numbers with numbers, 'text' with text, TRUE/FALSE with booleans)"


def _as_time(text: _Value, column: _Value) -> _Value:
    try:
        scalar = pa.scalar(text.constant).cast(column.type)
    except (pa.ArrowException, ValueError):
        raise WhereError(f"{text.shown} is not a {column.type} value for {column.shown}: write it as ISO 8601, "
                         "e.g. '2024-05-01 12:00:00'") from None
    return _Value(pc.scalar(scalar), "time", text.shown, constant=scalar)


def _value_set(subject: _Value, constants: list) -> tuple[_Value, pa.Array]:
    """IN's values as an array is_in can take beside the subject, which may become a float instead."""
    if subject.type is not None:
        try:
            return subject, pa.array(constants).cast(subject.type)  # a safe cast: 2.5 is no int64
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            pass
    if subject.kind == "number":
        return _Value(subject.expr.cast(pa.float64()), "number", subject.shown), pa.array(constants, pa.float64())
    return subject, pa.array(constants, type={"boolean": pa.bool_(), "string": pa.string()}.get(subject.kind))


def _condition(value: _Value) -> _Value:
    if value.kind in ("boolean", "null"):
        return value
    example = {"number": "> 0", "string": "= 'x'"}.get(value.kind, "IS NULL")
    raise WhereError(f"{value.described()} is not a condition: compare it, e.g. {value.shown} {example}; "
                     f"the WHERE clause takes {SUPPORTED}")


def _unsupported(node: exp.Expression) -> str:
    if isinstance(node, (exp.Query, exp.Subquery, exp.Exists)):
        return f"subqueries and SELECT are not supported: write only the condition, {EXAMPLE}"
    if isinstance(node, exp.Func):
        name = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
        what = "aggregates" if isinstance(node, exp.AggFunc) else "functions"
        return f"{what} such as {_cut(name, 30)}() are not supported in the WHERE clause; it takes {SUPPORTED}"
    if isinstance(node, exp.Escape):
        return "LIKE ... ESCAPE is not supported: a backslash escapes % and _, e.g. name LIKE '50\\%'"
    return f"{node.key.upper()} ({_sql(node)}) is not supported in the WHERE clause; it takes {SUPPORTED}"


def _constant(value, kind: str, shown: str) -> _Value:
    if kind == "number" and value is None:
        raise WhereError(f"{_cut(shown)} is not a number: write digits, e.g. 0.25 or 1e3")
    if kind == "number" and isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise WhereError(f"{_cut(shown)} is too large for a 64-bit integer: write a smaller number")
    return _Value(pc.scalar(value), kind, shown, constant=value)


def _number(text: str) -> int | float | None:
    for read in (int, float):
        try:
            return read(text)
        except ValueError:
            pass
    return None


def _kind(type_: pa.DataType) -> str:
    t = pa.types
    kinds = {"number": (t.is_integer, t.is_floating, t.is_decimal), "boolean": (t.is_boolean,),
             "string": (t.is_string, t.is_large_string, t.is_string_view), "time": (t.is_temporal,)}
    return next((kind for kind, tests in kinds.items() if any(test(type_) for test in tests)), "other")


def _name(name: str) -> str:
    """A column's name as the clause would write it: quoted unless a plain identifier."""
    return name if name.isidentifier() and name.isascii() else '"' + _cut(name).replace('"', '""') + '"'


def _sql(node: exp.Expression) -> str:
    try:
        return _cut(node.sql(dialect=_WhereDialect))
    except Exception:  # generating SQL back is a courtesy for the message, never a reason to fail
        return node.key.upper()


def _cut(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())  # one line, whatever the input held
    return text if len(text) <= limit else text[: limit - 3] + "..."
