import json
from dataclasses import dataclass, field

import pytest

from e2etal import io
from e2etal.config import ConfigError, config_changes, load_config, to_dict


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out.json"
    io.write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(path) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash mid-write")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


@dataclass
class Inner:
    lr: float = 1e-3
    ranges: tuple[tuple[int, int], ...] = ((0, 4), (4, 8))


@dataclass
class Outer:
    name: str = "x"
    epochs: int = 10
    amp: bool = False
    subset: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_load_config_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\ninner:\n  lr: 0.01\n")
    cfg = load_config(Outer, path, ["inner.ranges=[[0, 2], [2, 100]]", "amp=true", "subset=val"])
    assert cfg.epochs == 3 and cfg.inner.lr == 0.01 and cfg.amp is True and cfg.subset == "val"
    assert cfg.inner.ranges == ((0, 2), (2, 100))
    assert to_dict(cfg)["inner"]["ranges"] == [[0, 2], [2, 100]]
    assert load_config(Outer, None, ["epochs=5"]).epochs == 5


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("epochz: 3\n", [], r"c.yaml: unknown key\(s\) \['epochz'\]"),
        ("epochs: three\n", [], r"c.yaml.epochs: expected an integer, got 'three'"),
        ("", ["inner.lr=fast"], r"inner.lr: expected a number"),
        ("", ["epochs"], "expected KEY=VALUE"),
        ("- a\n", [], "mapping at the top level"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path, text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, path, overrides)


def test_yaml_is_data_not_code(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, path)


def test_config_changes_lists_differing_entries_by_dotted_key():
    old = {"model": {"embed_dim": 128, "ranges": [[0, 4]]}, "losa": {"taps": [2]}, "name": "a"}
    new = {"model": {"embed_dim": 256, "ranges": [[0, 4]]}, "losa": {"taps": [2], "short_conv_kernel": None}, "name": "a"}
    assert config_changes(old, new) == ["losa.short_conv_kernel: <absent> -> None", "model.embed_dim: 128 -> 256"]
    assert config_changes(new, new) == []
