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


def test_internal_topics_are_named_after_the_group_id():
    cfg = parse_config({"kafka": {"group_id": "fraud-eu"}, "models": {"m": MODEL}})
    t = cfg.topics
    assert (t.state, t.join, t.panes, t.references) == ("fraud-eu.state", "fraud-eu.join", "fraud-eu.panes",
                                                        "fraud-eu.references")
    assert t.alerts == "stream-monitor.alerts" and t.predictions == "predictions"  # outputs and inputs: as set


def test_the_default_group_keeps_the_internal_topic_names_of_earlier_versions():
    t = parse_config({"models": {"m": MODEL}}).topics
    assert (t.state, t.join, t.panes, t.references) == ("stream-monitor.state", "stream-monitor.join",
                                                        "stream-monitor.panes", "stream-monitor.references")


def test_an_explicit_internal_topic_name_wins_over_the_derived_one():
    # even one equal to the old default: a deployment that names its state topic keeps it under any group id
    cfg = parse_config({"kafka": {"group_id": "g2"}, "topics": {"state": "stream-monitor.state", "join": "j"},
                        "models": {"m": MODEL}})
    assert (cfg.topics.state, cfg.topics.join, cfg.topics.panes) == ("stream-monitor.state", "j", "g2.panes")
    # resolving again for another group renames only what was derived
    again = cfg.topics.for_group("g3")
    assert (again.state, again.join, again.panes, again.references) == ("stream-monitor.state", "j", "g3.panes",
                                                                        "g3.references")


def test_a_group_id_that_makes_no_topic_name_is_a_config_error_unless_the_topics_are_named():
    with pytest.raises(ConfigError, match="x.yaml: topics.state: kafka.group_id 'team a' gives no valid topic name"):
        parse_config({"kafka": {"group_id": "team a"}, "models": {"m": MODEL}}, "x.yaml")
    named = {r: f"team-a.{r}" for r in ("state", "join", "panes", "references")}
    assert parse_config({"kafka": {"group_id": "team a"}, "topics": named, "models": {"m": MODEL}}).topics.state \
        == "team-a.state"
