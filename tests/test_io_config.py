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
        ("epochz: 3\n", [], r"c.yaml: epochz: unknown key; did you mean 'epochs'\?"),
        ("inner:\n  rangs: []\n", [], r"c.yaml: inner.rangs: unknown key; did you mean 'ranges'\?"),
        ("epochs: three\n", [], r"c.yaml: epochs: expected an integer, got 'three'"),
        ("inner:\n  lr: fast\n", [], r"c.yaml: inner.lr: expected a number, got 'fast'"),
        ("", ["inner.lr=fast"], r"^--set inner.lr=fast: inner.lr: expected a number"),
        ("epochs: 3\n", ["inner.lrr=1"], r"^--set inner.lrr=1: inner.lrr: unknown key; did you mean 'lr'\?"),
        ("", ["inner.ranges=[[0, 1], [1, x]]"], r"^--set inner.ranges=\[\[0, 1\], \[1, x\]\]: inner.ranges\[1\]\[1\]: expected an integer"),
        ("", ["inner.lr=[1, 2"], r"--set inner.lr=\[1, 2: the value is not valid YAML"),
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


@pytest.mark.parametrize("written", ["1e-4", "1E-4", "1.0e-4", ".0001", "0.0001"])
def test_every_float_spelling_python_reads_is_a_number(tmp_path, written):
    # PyYAML reads 1e-4 (no dot) as a string; users write it in configs and on the command line.
    path = tmp_path / "c.yaml"
    path.write_text(f"inner:\n  lr: {written}\n")
    assert load_config(Outer, path).inner.lr == pytest.approx(1e-4)
    assert load_config(Outer, None, [f"inner.lr={written}"]).inner.lr == pytest.approx(1e-4)


def test_a_dataclass_check_names_the_file(tmp_path):
    @dataclass
    class Checked:
        epochs: int = 1

        def __post_init__(self):
            if self.epochs < 1:
                raise ValueError("epochs must be >= 1")

    path = tmp_path / "c.yaml"
    path.write_text("epochs: 0\n")
    with pytest.raises(ConfigError, match=r"c.yaml: epochs must be >= 1"):
        load_config(Checked, path)
