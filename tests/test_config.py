import datetime as dt

import pytest

from core.config import ConfigError, load_config


def test_default_profile_is_local_yaml_with_bundled_source():
    conf = load_config()
    assert conf.spark.master == "local[*]"
    assert [s.name for s in conf.ingest.sources] == ["online_retail"]
    assert conf.ingest.sources[0].path == "data/online_retail/by-day"
    assert conf.run.date == "latest"


def test_set_overrides_nested_keys_with_yaml_typed_values():
    conf = load_config(
        overrides=["aggregate.horizon_days=180", "run.date=2011-09-01", "aggregate.windows.recent=7"]
    )
    assert conf.aggregate.horizon_days == 180
    assert conf.run.date == dt.date(2011, 9, 1)
    assert conf.aggregate.windows.recent == 7
    assert conf.aggregate.windows.long_term == 365


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(
        ConfigError, match=r"aggregate\.horizon_dayz: unknown key \(did you mean 'horizon_days'\?\)"
    ):
        load_config(overrides=["aggregate.horizon_dayz=10"])


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match=r"agregate: unknown key \(did you mean 'aggregate'\?\)"):
        load_config(overrides=["agregate.horizon_days=10"])


def test_wrong_type_names_the_key_and_value():
    with pytest.raises(ConfigError, match=r"aggregate\.horizon_days: .*'many'"):
        load_config(overrides=["aggregate.horizon_days=many"])


def test_out_of_range_value_is_rejected():
    with pytest.raises(ConfigError, match=r"aggregate\.horizon_days"):
        load_config(overrides=["aggregate.horizon_days=0"])


def test_unknown_key_inside_a_source_list_is_named():
    with pytest.raises(ConfigError, match=r"ingest\.sources\.0\.pth: unknown key \(did you mean 'path'\?\)"):
        load_config(overrides=["ingest.sources=[{name: x, format: generic, pth: /tmp}]"])


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(overrides=["aggregate.horizon_days"])


def test_missing_profile_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))


def test_profile_file_from_a_path(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("storage:\n  root: /data/wh\nspark:\n  shuffle_partitions: 64\n")
    conf = load_config(str(p))
    assert conf.storage.root == "/data/wh"
    assert conf.spark.shuffle_partitions == 64
    assert conf.ingest.sources == []  # a file replaces the defaults of local.yaml, section by section


def test_every_shipped_profile_validates():
    from importlib import resources

    names = [
        p.name
        for p in resources.files("conf").iterdir()
        if p.name.endswith(".yaml") and p.name != "categories.yaml"
    ]
    assert {"local.yaml", "cluster.yaml"} <= set(names)
    for name in names:
        load_config(name)
