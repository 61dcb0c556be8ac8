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


def test_config_differences_fill_method_defaults_and_ignore():
    from partialseg.methods.resolve import config_differences, with_method_defaults

    a = load_config(None, ["method.name=ipnp"])
    b = load_config(None, ["method.name=ipnp", "method.options.tau=0.05"])  # tau's default
    assert config_differences(a, b) == []
    c = load_config(None, ["method.name=ipnp", "method.options.tau=0.3", "train.num_threads=3", "optim.lr=0.1"])
    assert config_differences(a, c) == ["method.options.tau", "optim.lr", "train.num_threads"]
    assert config_differences(a, c, ignore=("method", "train.num_threads")) == ["optim.lr"]
    assert config_differences(a.to_dict(), c.to_dict(), ignore=("optim",)) == ["method.options.tau", "train.num_threads"]
    full = with_method_defaults(a).method.options
    assert full["tau"] == 0.05 and full["pseudo_source"] == "generalist" and full["rounds"] == 2
    assert with_method_defaults(load_config(None, ["method.name=full"])).method.options == {}
