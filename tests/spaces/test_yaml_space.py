import contextlib
import random
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ranknas.errors import ConfigError, SpaceError
from ranknas.spaces import build_model, load_space, space_from_dict

EXAMPLE = Path(__file__).parents[2] / "examples" / "my_space.yaml"


def doc(**overrides):
    base = yaml.safe_load(EXAMPLE.read_text())
    base.update(overrides)
    return base


def test_example_space_loads_samples_and_builds(tiny_schema):
    space = load_space(str(EXAMPLE))
    assert space.name == "my_space"
    names = [c.name for c in space.choices()]
    assert "b1.op" in names and "b2.left" in names and "b3.depth" in names
    rng = random.Random(0)
    for _ in range(10):
        arch = space.sample(rng)
        build_model(space, arch, tiny_schema)


@pytest.mark.parametrize(("mutate", "where", "needle"), [
    (lambda d: d["blocks"][1]["ops"].append("fc2"), "blocks[1].ops[2]", "unknown operator 'fc2'"),
    (lambda d: d["blocks"][0].update(inputs={"from": ["nowhere"]}), "blocks[0].inputs",
     "unknown source 'nowhere'"),
    (lambda d: d["blocks"][0].update(inputs={"from": ["b2"]}), "blocks",
     "cycle: b2 -> b1"),
    (lambda d: d["blocks"][0].update(widht=[1]), "blocks[0].widht", "unknown key"),
    (lambda d: d["blocks"][0].update(width=[0]), "blocks[0].width", "positive integer"),
    (lambda d: d["blocks"][2].update(depth=["x"]), "blocks[2].depth", "positive integer"),
    (lambda d: d["blocks"][1].update(id="b1"), "blocks[1].id", "duplicate id"),
    (lambda d: d["blocks"][0].pop("ops"), "blocks[0].ops", "missing"),
    (lambda d: d["blocks"][0].update(inputs={"from": ["dense"], "min": 3, "max": 2}),
     "blocks[0].inputs", "min (3) is larger than max (2)"),
    (lambda d: d.update(output=["b9"]), "output", "unknown source 'b9'"),
    (lambda d: d.update(activation="gelu"), "activation", "unknown activation"),
])
def test_errors_name_the_yaml_path(mutate, where, needle):
    d = doc()
    mutate(d)
    with pytest.raises(SpaceError) as err:
        space_from_dict(d)
    assert str(err.value).startswith(where), str(err.value)
    assert needle in str(err.value)


def test_cycles_are_rejected():
    d = doc()
    d["blocks"][0]["inputs"] = {"ports": {"x": ["b2"]}}
    d["blocks"][1]["inputs"] = {"ports": {"x": ["b1"], "left": ["b1"], "right": ["b1"]}}
    with pytest.raises(SpaceError, match="cycle"):
        space_from_dict(d)


def test_shape_mismatch_rejected_before_training():
    # dot-product needs two fields; one dense input of width 13 folds into a single field.
    d = {"name": "bad", "blocks": [{"id": "b1", "ops": ["dot-product"],
                                    "inputs": ["dense"]}]}
    with pytest.raises(SpaceError, match="no buildable architecture"):
        space_from_dict(d)


def test_malformed_yaml_reports_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent("""\
        name: bad
        blocks:
          - id: b1
            ops: [linear-2d
        """))
    with pytest.raises(SpaceError) as err:
        load_space(str(path))
    assert str(err.value).startswith("bad.yaml:")


def test_file_errors_carry_the_file_name(tmp_path):
    path = tmp_path / "typo.yaml"
    d = doc()
    d["blocks"][1]["ops"][1] = "fc2"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(SpaceError, match=r"^typo.yaml: blocks\[1\].ops\[1\]: unknown operator"):
        load_space(str(path))


def test_unknown_builtin_lists_known_names():
    with pytest.raises(SpaceError, match="nasrec_full"):
        load_space("nasrec_fulll")


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(
        ["linear-2d", "dense", "sparse", "b1", "any-earlier", "x"]),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(
        st.sampled_from(["id", "ops", "width", "inputs", "from", "max", "ports", "depth"]), c,
        max_size=4), max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["name", "blocks", "output", "inputs", "layernorm"]),
                       yaml_values, max_size=5))
def test_arbitrary_documents_get_a_config_error_not_a_traceback(document):
    with contextlib.suppress(ConfigError):
        space_from_dict(document)
