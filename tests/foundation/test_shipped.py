"""The default model ships inside the package: it loads without training and scores the figure
README prints, on every machine, inside the accuracy band its recipe is held to."""

import re
from pathlib import Path

import pytest

from manyminds import zoo
from manyminds.zoo import registry

README = Path(__file__).resolve().parents[2] / "README.md"
# Held-out greedy accuracy of the default model on the arith test split: "competent but imperfect,
# so populations and RL have headroom" (README). A full rebuild is held to the same band by the slow
# tests/foundation/test_zoo.py::test_default_model_accuracy_in_range, the shipped weights here.
ACCURACY_BAND = (0.40, 0.85)


def test_default_model_is_shipped_and_loads_without_building(monkeypatch):
    monkeypatch.setattr(registry, "build", lambda *a, **k: pytest.fail("load() must not build the shipped model"))
    path = zoo.resolve(zoo.DEFAULT_MODEL)
    assert Path(path).parent == zoo.SHIPPED and zoo.is_built(zoo.DEFAULT_MODEL)
    model, tokenizer = zoo.load(zoo.DEFAULT_MODEL)
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer("7+8")["input_ids"]


@pytest.fixture(scope="module")
def shipped_accuracy() -> tuple[dict, float]:
    """The shipped marker, and the greedy accuracy the shipped weights score now on its problems."""
    from manyminds.tasks import load_task
    from manyminds.zoo.charlm import greedy_accuracy

    marker = zoo.read_marker(zoo.shipped_dir(zoo.DEFAULT_MODEL))
    model, tokenizer = zoo.load(zoo.DEFAULT_MODEL)
    problems = list(load_task("arith", "test", n=marker["eval_problems"], seed=0))
    return marker, greedy_accuracy(model, tokenizer, problems)


def test_shipped_model_scores_the_readme_figure(shipped_accuracy):
    marker, acc = shipped_accuracy
    assert acc == marker["arith_test_greedy_accuracy"]
    figure = re.search(r"`tiny-arith` scores \*\*([\d.]+)%\*\* greedy accuracy on the (\d+) ",
                       README.read_text())
    assert figure, "README's sentence with the figure is gone"
    assert float(figure.group(1)) == pytest.approx(100 * acc, abs=0.05), "README's figure is stale"
    assert int(figure.group(2)) == marker["eval_problems"], "README's number of problems is stale"


def test_shipped_model_accuracy_lies_in_the_band(shipped_accuracy):
    """The weights themselves, evaluated now: a re-shipped model with a matching marker and README
    figure must still be competent but imperfect."""
    marker, acc = shipped_accuracy
    low, high = ACCURACY_BAND
    n = marker["eval_problems"]
    assert n >= 200  # enough problems for the band to mean something (one problem = 0.5%)
    assert low <= acc <= high, (f"the shipped {zoo.DEFAULT_MODEL} scores {acc:.3f} on {n} held-out "
                                f"arith problems, outside [{low}, {high}]; ship a model inside it")


def test_corrupt_shipped_weights_are_not_used(tmp_path, monkeypatch):
    """A shipped folder whose weights do not match their marker is ignored (the cache path is used)."""
    import shutil

    fake = tmp_path / "weights"
    shutil.copytree(zoo.SHIPPED / zoo.DEFAULT_MODEL, fake / zoo.DEFAULT_MODEL)
    weights = fake / zoo.DEFAULT_MODEL / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    monkeypatch.setattr(registry, "SHIPPED", fake)
    assert zoo.shipped_dir(zoo.DEFAULT_MODEL) is None
    with pytest.raises(FileNotFoundError, match="not built"):
        zoo.resolve(zoo.DEFAULT_MODEL, build_missing=False)
