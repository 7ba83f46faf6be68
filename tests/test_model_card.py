"""The shipped model card keeps the fixed text of the template that ``train`` renders it from.

``engines/MODEL_CARD.md`` is written by ``colpo-gateway train`` from ``evaluate.model_card``, but findings added
between training runs (experiments tried and not shipped) are edited into both by hand. This test catches the two
drifting apart: every literal piece of the template's f-string must appear in the shipped card, in order.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path

from gateway.training import evaluate

CARD = Path(__file__).resolve().parent.parent / "engines" / "MODEL_CARD.md"


def template_literals() -> list[str]:
    """The constant pieces of ``model_card``'s returned f-string, in order."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(evaluate.model_card)))
    returns = [node for node in ast.walk(tree) if isinstance(node, ast.Return)]
    assert len(returns) == 1 and isinstance(returns[0].value, ast.JoinedStr)
    return [v.value for v in returns[0].value.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]


def test_template_has_its_fixed_text() -> None:
    literals = template_literals()
    assert len(literals) > 10
    assert sum(map(len, literals)) > 10_000


def test_shipped_card_keeps_every_literal_piece_in_order() -> None:
    card = CARD.read_text()
    position = 0
    for piece in template_literals():
        found = card.find(piece, position)
        assert found >= 0, f"MODEL_CARD.md lacks (or reorders) this text of evaluate.model_card: {piece[:120]!r}"
        position = found + len(piece)
