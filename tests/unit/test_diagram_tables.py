"""Diagram answers held to a markdown-table grammar (xgrammar on the transformers engine): on the tiny Qwen3-VL,
whose random weights write anything at all, every answer parses as a table with the requested columns, for
any budget (a row cut by the budget is dropped); without the grammar the same answers do not parse, so the
guard can fail. Parsed by markdown-it-py's GFM table rule, an independent parser."""

from __future__ import annotations

import pytest
from PIL import Image

from services.diagram.service import discover_adapters
from services.diagram.tables import check_columns, complete_table, header, table_constraint
from services.runtime.serving.generation import Constraint
from services.vl.engine import VisionLanguageEngine, VLItem

from tests.tables import markdown_table

COLUMNS = ["№", "Step", "Role"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from services import tiny

    path = tiny.ensure("diagram", tmp_path_factory.mktemp("tiny"))
    adapters, _ = discover_adapters([str(path / "adapters")])
    return VisionLanguageEngine.load(str(path), "cpu", "float32", model_class="Qwen3VLForConditionalGeneration",
                                     adapters=adapters, threads=1)


def item(i: int, budget: int, constraint: Constraint | None, adapter=None) -> VLItem:
    image = Image.new("RGB", (48 + 8 * i, 40), ((37 * i) % 256, 90, 200))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"table {i}?"}]}]
    return VLItem(msgs, [image], max_new_tokens=budget, temperature=0.9 if i % 2 else 0.0, adapter=adapter,
                  constraint=constraint)


def constrained(engine, budget: int) -> list:
    table = table_constraint(COLUMNS)
    return engine.generate_batch([item(i, budget, table, adapter) for i, adapter in
                                  enumerate(["default", "alt", "base", None, "default", "alt"])])


@pytest.mark.parametrize("budget", [4, 24, 96])
def test_every_constrained_answer_parses_as_the_table_asked_for(engine, budget):
    outs = constrained(engine, budget)
    assert len(outs) == 6
    h = header(COLUMNS)
    for out in outs:
        table = complete_table(out.text, COLUMNS)
        got = markdown_table(table)
        assert got is not None, table
        head, rows = got
        assert head == COLUMNS and all(len(r) == len(COLUMNS) for r in rows)
        # What the model wrote is the table itself: the header (or the part of it the budget allowed, maybe
        # ending inside a character: U+FFFD), then the rows; the repair only drops a row the budget cut.
        raw = out.text.rstrip("\ufffd")
        assert raw[:len(h)] == h[:len(raw)]
        assert raw.startswith(table) or len(raw) < len(h)


def test_with_room_the_grammar_makes_the_model_write_rows(engine):
    outs = constrained(engine, 96)
    assert sum(len(markdown_table(complete_table(o.text, COLUMNS))[1]) for o in outs) >= 1


def test_free_text_from_the_same_model_does_not_parse(engine):
    """The guard above can fail: unconstrained, the tiny model's answers are not tables."""
    outs = engine.generate_batch([item(i, 24, None) for i in range(4)])
    assert [markdown_table(complete_table(o.text, COLUMNS)) is not None for o in outs] == [True] * 4  # repaired: header only
    assert [markdown_table(o.text) for o in outs] == [None] * 4


def test_a_stream_is_held_to_the_grammar_too(engine):
    import threading

    pieces: list[str] = []
    engine.stream(item(1, 40, table_constraint(COLUMNS)), pieces.append, threading.Event())
    text = "".join(pieces)
    assert text.startswith(header(COLUMNS)[: len(text)])
    assert markdown_table(complete_table(text, COLUMNS))[0] == COLUMNS


# A bounded schema (enums, maxItems, no extra properties): with JSON's free whitespace off, every answer
# fits the budget, so every answer is complete JSON of the schema.
STEPS = {"type": "object", "additionalProperties": False, "required": ["steps"],
         "properties": {"steps": {"type": "array", "maxItems": 3, "items": {
             "type": "object", "additionalProperties": False, "required": ["n", "role"],
             "properties": {"n": {"enum": [1, 2, 3]}, "role": {"enum": ["user", "system", "service"]}}}}}}


def test_every_answer_held_to_a_json_schema_is_valid_json_of_it(engine):
    import json

    import jsonschema

    schema = Constraint(kind="json_schema", spec=json.dumps(STEPS))
    outs = engine.generate_batch([item(i, 160, schema, adapter) for i, adapter in enumerate(["default", "base", None, "alt"])])
    assert [o.finish_reason for o in outs] == ["stop"] * 4, [o.text for o in outs]
    for out in outs:
        jsonschema.validate(json.loads(out.text), STEPS)
    free = engine.generate_batch([item(i, 40, None) for i in range(2)])
    for out in free:  # the guard can fail: unconstrained, the answers are not JSON
        with pytest.raises(ValueError):
            json.loads(out.text)


def test_constraints_xgrammar_cannot_compile_are_refused():
    import json

    assert Constraint(kind="json_schema", spec=json.dumps(STEPS)).check() is None
    assert table_constraint(COLUMNS).check() is None
    for bad in (Constraint(kind="json_schema", spec='{"type": "objectx"}'),
                Constraint(kind="json_schema", spec="[1, 2"), Constraint(kind="ebnf", spec="root ::= nothing")):
        with pytest.raises(ValueError, match="cannot be used"):
            bad.check()


def test_columns_that_cannot_be_a_header_are_refused():
    assert check_columns([" a ", "b"]) == ["a", "b"]
    for bad in ([], ["a|b"], ["x\ny"], [""], ['q"'], ["c"] * 13, ["x" * 65]):
        with pytest.raises(ValueError):
            check_columns(bad)
