"""The default model ships inside the package: it loads without training and scores the figure
README prints, on every machine."""

import re
from pathlib import Path

import pytest

from manyminds import zoo

README = Path(__file__).resolve().parents[2] / "README.md"


def test_default_model_is_shipped_and_loads_without_building(monkeypatch):
    monkeypatch.setattr(zoo, "build", lambda *a, **k: pytest.fail("load() must not build the shipped model"))
    path = zoo.resolve(zoo.DEFAULT_MODEL)
    assert Path(path).parent == zoo.SHIPPED and zoo.is_built(zoo.DEFAULT_MODEL)
    model, tokenizer = zoo.load(zoo.DEFAULT_MODEL)
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer("7+8")["input_ids"]


def test_shipped_model_scores_the_readme_figure():
    from manyminds.charlm import greedy_accuracy
    from manyminds.tasks import load_task

    marker = zoo.read_marker(zoo.shipped_dir(zoo.DEFAULT_MODEL))
    model, tokenizer = zoo.load(zoo.DEFAULT_MODEL)
    acc = greedy_accuracy(model, tokenizer, list(load_task("arith", "test", n=marker["eval_problems"], seed=0)))
    assert acc == marker["arith_test_greedy_accuracy"]
    figure = re.search(r"`tiny-arith` scores \*\*([\d.]+)%\*\* greedy accuracy", README.read_text())
    assert figure and float(figure.group(1)) == pytest.approx(100 * acc, abs=0.05), "README's figure is stale"


def test_corrupt_shipped_weights_are_not_used(tmp_path, monkeypatch):
    """A shipped folder whose weights do not match their marker is ignored (the cache path is used)."""
    import shutil

    fake = tmp_path / "zoo_weights"
    shutil.copytree(zoo.SHIPPED / zoo.DEFAULT_MODEL, fake / zoo.DEFAULT_MODEL)
    weights = fake / zoo.DEFAULT_MODEL / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    monkeypatch.setattr(zoo, "SHIPPED", fake)
    assert zoo.shipped_dir(zoo.DEFAULT_MODEL) is None
    with pytest.raises(FileNotFoundError, match="not built"):
        zoo.resolve(zoo.DEFAULT_MODEL, build_missing=False)
