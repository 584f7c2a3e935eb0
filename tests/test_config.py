import pytest

from stream_monitor.config import ConfigError, load_config, parse_config

MODEL = {"features": {"numeric": ["a"], "categorical": ["b"]}}


def test_example_config_is_valid():
    cfg = load_config("config/example.yaml")
    m = cfg.models["loan-approval"]
    assert m.name == "loan-approval"
    assert m.window.size == 1000 and m.reference.size == 3000
    assert m.drift.bins == 10  # from defaults


def test_defaults_merge_per_key():
    cfg = parse_config({"defaults": {"window": {"size": 500, "by": "time"}},
                        "models": {"m": {**MODEL, "window": {"size": 60}}}})
    assert cfg.models["m"].window.size == 60
    assert cfg.models["m"].window.by == "time"


def test_config_objects_are_frozen():
    cfg = parse_config({"models": {"m": MODEL}})
    with pytest.raises(Exception):
        cfg.models["m"].window.size = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"models": {"m": {**MODEL, "window": {"size": 0}}}}, "models.m.window.size"),
        ({"models": {"m": {**MODEL, "windw": {}}}}, "models.m.windw"),
        ({"models": {"m": {**MODEL, "window": {"type": "sliding"}}}}, "models.m.window.slide"),
        ({"models": {"m": {**MODEL, "reference": {"type": "file"}}}}, "models.m.reference.path"),
        ({"models": {"m": {"features": {}}}}, "models.m.features"),
        ({"models": {"m": {"features": {"numeric": ["a", "b", "a"]}}}}, "models.m.features"),
        ({"models": {"m": {"features": {"numeric": ["a"], "categorical": ["a"]}}}}, "models.m.features"),
        ({"models": {"m": {**MODEL, "drift": {"thresholds": {"psi": -1}}}}}, "models.m.drift.thresholds.psi"),
        ({"models": {}}, "models"),
        ({"topics": {"alerts": 3}, "models": {"m": MODEL}}, "topics.alerts"),
    ],
)
def test_errors_name_the_bad_key(raw, key):
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "x.yaml")
    assert f"x.yaml: {key}:" in str(err.value)


def test_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
