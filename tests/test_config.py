import pytest

from partialseg.config import ExperimentConfig, load_config, parse_override
from partialseg.errors import InputError, PartialsegError


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = ExperimentConfig()
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    assert load_config(p) == cfg


def test_file_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  steps: 7\nmethod:\n  name: exclusion\n  options: {exclusion_weight: 2.0}\n")
    cfg = load_config(p, ["train.patch_size=[32,32,16]", "method.options.form=ce", "optim.lr=0.01"])
    assert cfg.train.steps == 7
    assert cfg.train.patch_size == (32, 32, 16)
    assert cfg.method.name == "exclusion"
    assert cfg.method.options == {"exclusion_weight": 2.0, "form": "ce"}
    assert cfg.optim.lr == 0.01


def test_parse_override_types():
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    assert parse_override("a=true") == {"a": True}
    assert parse_override("a=[1, 2]") == {"a": [1, 2]}
    with pytest.raises(PartialsegError, match="key=value"):
        parse_override("train.steps")


@pytest.mark.parametrize(
    "override, msg",
    [
        ("train.stepz=3", "stepz"),
        ("train.steps=abc", "integer"),
        ("train.amp=3", "true or false"),
        ("train.patch_size=[1,2]", "3 values"),
        ("data.spacing=[1,2,x]", "number"),
    ],
)
def test_bad_overrides_name_the_key(override, msg):
    with pytest.raises(InputError, match=msg):
        load_config(None, [override])


def test_int_accepted_for_float_and_optional():
    cfg = load_config(None, ["optim.lr=1", "data.spacing=[5, 5, 5]"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.data.spacing == (5.0, 5.0, 5.0)
    assert load_config(None, ["data.spacing=null"]).data.spacing is None
