"""Ranking and filtering the screen's candidates on their properties.

The columns a user may rank and filter on are :data:`PROPERTIES` (name -> kind, unit, source).
``--rank-by`` is a score over them, highest first: an expression of column names, numbers,
``+ - * /`` and unary minus, parsed with Python's :mod:`ast` and evaluated by walking the tree
(never ``eval``): ``"qed - 0.1*sa"``, ``"-xtb_relaxation_ev"``. ``--filter`` is one comparison of
two such expressions (``"qed>=0.5"``, ``"sa<=4"``). An expression over molecule columns applies to
molecules only, one over crystal columns to crystals only; one mixing both kinds is refused.

:func:`rank` orders rows best first. Passing candidates always come before the others (so
``passing/`` is the head of the order); within each group the score decides, candidates without
a property the score needs (xTB failed, not valid, ...) after those with it, then the default
order: more checks passed, then the lowest xTB relaxation energy (molecules) or CHGNet relaxed
energy per atom (crystals); ties keep the input order.

:func:`apply_filters` runs on the passing candidates, in the order the filters are given: each
one's count is of the candidates it removed from those still passing. A candidate without a
property a filter needs is removed by it (it cannot be shown to meet the threshold).
"""

from __future__ import annotations

import ast
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

MOLECULE, CRYSTAL = "molecule", "crystal"

# name: (kind the column belongs to, None for both; unit; where it comes from)
PROPERTIES: dict[str, tuple[str | None, str, str]] = {
    "n_atoms": (None, "atoms", "the record"),
    "qed": (MOLECULE, "0-1, higher is more drug-like", "RDKit QED (Bickerton et al. 2012)"),
    "logp": (MOLECULE, "log10 units", "RDKit Crippen logP (Wildman & Crippen 1999)"),
    "sa": (MOLECULE, "1 easy - 10 hard", "RDKit Contrib SA score (Ertl & Schuffenhauer 2009)"),
    "xtb_energy": (MOLECULE, "eV", "GFN2-xTB total energy as given (--xtb)"),
    "xtb_relaxed_energy": (MOLECULE, "eV", "GFN2-xTB total energy relaxed (--xtb)"),
    "xtb_relaxation_ev": (MOLECULE, "eV", "xtb_energy - xtb_relaxed_energy (--xtb)"),
    "xtb_rmsd_a": (MOLECULE, "A", "RMSD of the relaxation's move, Kabsch (--xtb)"),
    "xtb_gap": (MOLECULE, "eV", "GFN2-xTB HOMO-LUMO gap, relaxed geometry (--xtb)"),
    "xtb_dipole": (MOLECULE, "Debye", "GFN2-xTB dipole moment, relaxed geometry (--xtb)"),
    "density": (CRYSTAL, "g/cm^3", "pymatgen"),
    "chgnet_energy_per_atom": (CRYSTAL, "eV/atom", "CHGNet energy as given (--chgnet)"),
    "chgnet_relaxed_energy_per_atom": (CRYSTAL, "eV/atom", "CHGNet energy relaxed (--chgnet)"),
}

_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b if b != 0 else math.nan,
}
_COMPARE = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}


class ExpressionError(ValueError):
    """A ``--rank-by`` or ``--filter`` text that is not an expression of :data:`PROPERTIES`."""


@dataclass(frozen=True)
class Expression:
    """A checked expression over :data:`PROPERTIES`: its ``text``, its tree (``ast``, only
    names, numbers, ``+ - * /`` and unary minus) and the ``names`` it reads."""

    text: str
    tree: ast.expr
    names: frozenset[str]

    @property
    def kind(self) -> str | None:
        """The kind of candidate it applies to (``"molecule"``, ``"crystal"``), None for both."""
        return _joint_kind(self.text, [self])

    def value(self, row: dict) -> float | None:
        """The expression on one screen row; None when a column it reads is missing, None or
        not finite there, or the result is not finite (a division by zero)."""
        values = {n: row.get(n) for n in self.names}
        if any(not _finite(v) for v in values.values()):
            return None
        result = _evaluate(self.tree, values)
        return result if math.isfinite(result) else None


@dataclass(frozen=True)
class Filter:
    """A threshold ``left OP right`` (OP one of ``< <= > >=``) on the passing candidates."""

    text: str
    left: Expression
    op: str
    right: Expression

    @property
    def names(self) -> frozenset[str]:
        """The columns it reads."""
        return self.left.names | self.right.names

    @property
    def kind(self) -> str | None:
        """The kind of candidate it applies to, None for both."""
        return _joint_kind(self.text, [self.left, self.right])

    def keeps(self, row: dict) -> bool:
        """Whether ``row`` meets the threshold (False when a side has no value)."""
        a, b = self.left.value(row), self.right.value(row)
        if a is None or b is None:
            return False
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[self.op]


def _finite(value) -> bool:
    """A real number (NumPy's too) that is finite; None, booleans and text are not."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    return real and math.isfinite(value)


def _evaluate(node: ast.expr, values: dict[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return float(values[node.id])
    if isinstance(node, ast.UnaryOp):
        return -_evaluate(node.operand, values)
    return _BINARY[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values))


def _check(node: ast.AST, text: str) -> None:
    """Refuse every node but names of :data:`PROPERTIES`, numbers, ``+ - * /``, unary minus."""
    if isinstance(node, ast.Name):
        if node.id not in PROPERTIES:
            raise ExpressionError(
                f"unknown column {node.id!r} in {text!r} (columns: {', '.join(PROPERTIES)})"
            )
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ExpressionError(f"{node.value!r} in {text!r} is not a number")
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        _check(node.operand, text)
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check(node.left, text)
        _check(node.right, text)
    else:
        token = ast.get_source_segment(text, node) or type(node).__name__
        raise ExpressionError(
            f"{token!r} in {text!r} is not allowed (only column names, numbers, + - * / and "
            "unary minus)"
        )


MAX_LENGTH = 500  # characters: a score or threshold is short, and deep nesting overflows ast


def _parse(text: str) -> ast.expr:
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"{text[:40]!r}... is longer than {MAX_LENGTH} characters")
    try:
        return ast.parse(text.strip(), mode="eval").body
    except SyntaxError as err:
        raise ExpressionError(f"{text!r} is not an expression ({err.msg})") from None


def _expression(node: ast.expr, text: str) -> Expression:
    _check(node, text)
    names = frozenset(n.id for n in ast.walk(node) if isinstance(n, ast.Name))
    expression = Expression(ast.get_source_segment(text, node) or text, node, names)
    _joint_kind(text, [expression])
    return expression


def _joint_kind(text: str, expressions: Sequence[Expression]) -> str | None:
    kinds = {PROPERTIES[n][0] for e in expressions for n in e.names} - {None}
    if len(kinds) > 1:
        raise ExpressionError(f"{text!r} mixes molecule and crystal columns")
    return kinds.pop() if kinds else None


def parse_expression(text: str) -> Expression:
    """The :class:`Expression` of ``text`` (``"qed - 0.1*sa"``). Raises :class:`ExpressionError`
    (one line naming the unknown column or the token not allowed) for anything else."""
    text = text.strip()
    return _expression(_parse(text), text)


def checked_rank_by(text: str | None) -> str | None:
    """``--rank-by`` as a config keeps it: the stripped text of :func:`parse_expression`, or
    None; :class:`ExpressionError` as there (a pydantic validator of the configs)."""
    return None if text is None else parse_expression(text).text


def checked_filters(texts: Sequence[str]) -> list[str]:
    """``--filter`` texts as a config keeps them, each through :func:`parse_filter`."""
    return [parse_filter(text).text for text in texts]


def parse_filter(text: str) -> Filter:
    """The :class:`Filter` of ``text`` (``"qed>=0.5"``: one comparison ``< <= > >=`` of two
    expressions). Raises :class:`ExpressionError` (one line) for anything else."""
    text = text.strip()
    node = _parse(text)
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE):
        raise ExpressionError(
            f"{text!r} is not one comparison such as 'qed>=0.5' (operators < <= > >=)"
        )
    left, right = _expression(node.left, text), _expression(node.comparators[0], text)
    _joint_kind(text, [left, right])
    return Filter(text, left, _COMPARE[type(node.ops[0])], right)


def needed_options(rank_by: str | None, filters: Sequence[str]) -> dict[str, str]:
    """``{column: "xtb" | "chgnet"}`` for the columns of ``rank_by`` and ``filters`` that only
    the screen's ``--xtb`` or ``--chgnet`` computes (the ``xtb_`` and ``chgnet_`` columns), in
    name order. Raises :class:`ExpressionError` for a text that does not parse."""
    names = parse_expression(rank_by).names if rank_by else frozenset()
    for text in filters:
        names |= parse_filter(text).names
    return {n: n.split("_")[0] for n in sorted(names) if n.startswith(("xtb_", "chgnet_"))}


def applies(kind: str | None, row: dict) -> bool:
    """Whether an expression or filter of ``kind`` (None: both) applies to ``row``."""
    return row.get("kind") in (MOLECULE, CRYSTAL) and kind in (None, row["kind"])


def apply_filters(rows: list[dict], filters: Sequence[Filter]) -> dict[str, int]:
    """Apply ``filters`` in order to the passing rows of their kind (in place): each row that
    passed its checks gets ``filter`` and ``filter_reason`` (``"ok"``, or the first filter that
    removed it, which also sets ``passed`` False); rows that did not pass get neither. Returns
    ``{filter text: number of rows it removed}`` (counted on the rows still passing when it
    applied)."""
    removed = {f.text: 0 for f in filters}
    if not filters:
        return removed
    for row in rows:
        if row.get("passed"):
            row["filter"], row["filter_reason"] = True, "ok"
    for f in filters:
        for row in rows:
            if row.get("passed") and applies(f.kind, row) and not f.keeps(row):
                row["passed"], row["filter"] = False, False
                missing = sorted(n for n in f.names if row.get(n) is None)
                why = f"no {', '.join(missing)} for" if missing else "fails"
                row["filter_reason"] = f"{why} {f.text}"
                removed[f.text] += 1
    return removed


DEFAULT_CHECKS = (
    "stable", "valid", "connected", "unique", "novel", "posebusters", "struct_valid",
    "comp_valid",
)  # fmt: skip


def rank(rows: list[dict], by: Expression | None = None) -> list[dict]:
    """``rows`` (one kind) ordered best first, with a 1-based ``rank`` column added (in place).

    Passing rows first; then, with ``by``, the highest score (rows ``by`` does not apply to, or
    without a property it needs, after the others, with ``score`` None); then more of
    :data:`DEFAULT_CHECKS` passed, then the lowest ``xtb_relaxation_ev`` (molecules, ``--xtb``)
    or ``chgnet_relaxed_energy_per_atom`` (crystals, ``--chgnet``); ties keep the input order.
    With ``by`` every row gets a ``score`` column.
    """

    def key(row: dict) -> tuple:
        n_ok = sum(bool(row.get(c)) for c in DEFAULT_CHECKS)
        energy = row.get("xtb_relaxation_ev", row.get("chgnet_relaxed_energy_per_atom"))
        score = row.get("score")
        return (
            not row.get("passed", False),
            score is None,
            -score if score is not None else 0.0,
            -n_ok,
            energy if energy is not None else math.inf,
        )

    if by is not None:
        for row in rows:
            row["score"] = by.value(row) if applies(by.kind, row) else None
    ordered = sorted(rows, key=key)
    for k, row in enumerate(ordered, 1):
        row["rank"] = k
    return ordered


__all__ = [
    "Expression",
    "ExpressionError",
    "Filter",
    "PROPERTIES",
    "applies",
    "apply_filters",
    "checked_filters",
    "checked_rank_by",
    "needed_options",
    "parse_expression",
    "parse_filter",
    "rank",
]
