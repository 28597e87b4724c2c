"""`edgepress stages [KIND]`: every stage's settings documented as data (help beside each field), listed with their
types, defaults and ranges; and the move of that help into field metadata changed no default, range or type."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edgepress.compress.qat import QatSettings
from edgepress.compress.quant.static import PtqSettings
from edgepress.core import schema
from edgepress.stages.registry import REGISTRY
from tests.conftest import assert_one_line_error, run_main

def _default(field: dataclasses.Field):
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return repr(value)


def test_every_setting_of_every_stage_has_help():
    for kind, stage in REGISTRY.items():
        docs = schema.describe(stage.settings_type)
        assert [d.name for d in docs] == [f.name for f in dataclasses.fields(stage.settings_type)], kind
        for doc in docs:
            assert doc.help.strip(), f"{kind}.{doc.name} has no help"
            assert "\n" not in doc.help and doc.help == " ".join(doc.help.split()), f"{kind}.{doc.name}"


def test_help_of_a_redeclared_field_is_its_own_and_its_range_the_parent_s():
    docs = {d.name: d for d in schema.describe(QatSettings)}
    assert "converged" in docs["epochs"].help  # qat's own, not the loop's
    assert docs["epochs"].bounds == schema.Bounds(1, 10000) and docs["epochs"].default == 1
    assert docs["momentum"].help == schema._metadata(QatSettings.__mro__[1], "momentum", "help")
    with pytest.raises(ValueError, match="epochs"):
        QatSettings(epochs=0)  # the range still holds on a field redeclared with help and no bounds


def test_parse_and_bounded_are_unchanged():
    def parse(table):
        return schema.parse(PtqSettings, table, where="stages[0]", resolve_path=None)

    assert parse({}) == PtqSettings()
    assert parse({"calibration_samples": 64, "op_types": ["Conv"]}).op_types == ("Conv",)
    with pytest.raises(schema.SchemaError) as caught:
        parse({"calibration_samples": 0})
    assert str(caught.value) == ("'stages[0].calibration_samples' = 0 is outside the sensible range [1, 1_000_000_000]; "
                                 "fix: set calibration_samples to a value in [1, 1_000_000_000]")
    with pytest.raises(schema.SchemaError, match="did you mean 'percentile'"):
        parse({"percentil": 99.9})
    with pytest.raises(ValueError, match="calibration_batch"):
        PtqSettings(calibration_batch=0)


def test_setting_and_within_metadata():
    @dataclasses.dataclass(frozen=True)
    @schema.bounded
    class Example:
        plain: int = schema.within(0, 9, default=1)
        helped: int = schema.within(0, 9, default=2, help="a number")
        table: dict = schema.setting(default_factory=dict, help="a table")
        flag: bool = schema.setting(True, help="a switch")

    fields = {f.name: f for f in dataclasses.fields(Example)}
    assert "help" not in fields["plain"].metadata and fields["helped"].metadata["help"] == "a number"
    assert Example().table == {} and Example().table is not Example().table
    assert [d.help for d in schema.describe(Example)] == ["", "a number", "a table", "a switch"]
    with pytest.raises(TypeError):
        schema.setting(help="neither a default nor a factory")
    with pytest.raises(TypeError):
        schema.setting(1, default_factory=int, help="both")


def test_closest_keeps_difflib_s_pick_unless_asked_for_fewest_edits():
    assert schema.closest("pqt", REGISTRY) == "qat"  # difflib's tie-break, which recipe errors keep
    assert schema.closest("pqt", REGISTRY, fewest_edits=True) == "ptq"
    assert schema.closest("prune_dept", REGISTRY, fewest_edits=True) == "prune_depth"
    assert schema.closest("zzzz", REGISTRY, fewest_edits=True) is None


def test_stages_lists_every_kind_with_formats_and_summary():
    proc = run_main("stages")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(REGISTRY)
    for line, stage in zip(lines, REGISTRY.values()):
        assert f"{stage.input_format} -> {stage.output_format}" in line
        assert ", ".join(stage.modalities) in line and line.endswith(stage.summary)


def test_stages_ptq_shows_every_setting_and_its_default():
    proc = run_main("stages", "ptq")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"ptq: {REGISTRY['ptq'].summary}"
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line and not line.startswith(" ")}
    for field in dataclasses.fields(PtqSettings):
        assert f"  {_toml(_default(field))}" in rows[field.name], (field.name, rows[field.name])
    assert "[1, 1_000_000_000]" in rows["calibration_samples"]
    assert '"u8s8"' in rows["scheme"] and "99.999" in rows["percentile"] and "false" in rows["equalize"]
    # each help is printed, wrapped, under its setting
    assert " ".join(proc.stdout.split()).count(" ".join(schema.describe(PtqSettings)[1].help.split())) == 1


@pytest.mark.parametrize("kind", list(REGISTRY))
def test_stages_kind_json_matches_the_dataclass(kind):
    proc = run_main("stages", kind, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    cls = REGISTRY[kind].settings_type
    fields = dataclasses.fields(cls)
    assert [row["name"] for row in rows] == [f.name for f in fields]
    for row, field in zip(rows, fields):
        default = _default(field)
        assert row["default"] == (list(default) if isinstance(default, tuple) else default), field.name
        assert type(row["default"]) is type(list(default) if isinstance(default, tuple) else default), field.name
        bounds = schema._bounds(cls, field.name)
        assert row["bounds"] == (None if bounds is None else dataclasses.asdict(bounds)), field.name
        assert row["help"] and row["required"] is False


def test_stages_json_lists_the_kinds():
    proc = run_main("stages", "--json")
    rows = json.loads(proc.stdout)
    assert [row["kind"] for row in rows] == list(REGISTRY)
    assert rows[list(REGISTRY).index("ptq")] == {"kind": "ptq", "input_format": "onnx", "output_format": "onnx",
                                                 "modalities": list(REGISTRY["ptq"].modalities),
                                                 "needs": ["calibration"], "summary": REGISTRY["ptq"].summary}


def test_unknown_kind_is_one_line_naming_the_closest():
    assert_one_line_error(run_main("stages", "pqt"), "unknown stage kind 'pqt'", "did you mean 'ptq'?")
    assert_one_line_error(run_main("stages", "nothing_like_it", "--json"), "use one of train, prune")
