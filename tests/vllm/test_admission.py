"""The one spec check and the salt rule shared by the client, the engine's guard and the worker
(``manyminds.vllm.admission``). Pure functions: these run without vLLM too."""

import pytest

from manyminds.population import MindSpec
from manyminds.vllm.admission import check_spec, mind_salt, salt_for

LAYOUT = {"model": "TinyLlama", "hidden_size": 8,
          "selections": {"all": {"num_layers": 5}, "blocks": {"num_layers": 4}, "final": {"num_layers": 1}}}


def test_good_specs_pass_in_either_form():
    spec = MindSpec(seed=0, mind=3, sigma=[0.1, 0.2, 0.3, 0.4], norms="blocks", num_layers=4, width=8)
    assert check_spec(spec, LAYOUT) is spec
    assert check_spec(spec.to_dict(), LAYOUT) == spec
    assert check_spec({"seed": 0, "mind": 1, "sigma": 0.2}, LAYOUT) == MindSpec(seed=0, mind=1, sigma=0.2)


@pytest.mark.parametrize("raw, match", [
    ("x", "a mind spec is a dict, got str"),
    ([("seed", 0)], "a mind spec is a dict, got list"),
    ({"seed": 0, "mind": 1}, "missing key"),
    ({"seed": 0, "mind": 1, "sigma": [0.1, 0.2]}, "2 sigma values but the vLLM engine's TinyLlama perturbs 5"),
    ({"seed": 0, "mind": 1, "sigma": 0.1, "include_qk_norms": True}, "include_qk_norms=True"),
    ({"seed": 0, "mind": 1, "sigma": 0.1, "include_qk_norms": []}, "include_qk_norms must be true or false"),
    ({"seed": 0, "mind": 1, "sigma": 0.1, "norms": "nope"}, "norms must be one of"),
    ({"seed": 0, "mind": 1, "sigma": 0.1, "num_layers": 7, "width": 8}, "made for a model with 7 perturbed norms"),
    ({"seed": 0, "mind": 1, "sigma": 0.1, "width": 16}, "width 16"),
    ({"seed": 0, "mind": "1", "sigma": 0.1}, "mind must be an int"),
    ({"seed": 0, "mind": 1, "sigma": None}, "sigma must be a float"),
])
def test_bad_specs_are_one_value_error(raw, match):
    """Every way a client's spec can be wrong is one ValueError of one line (the worker and the engine's
    guard turn it into a failed request, the client into a refused call)."""
    with pytest.raises(ValueError, match=match) as err:
        check_spec(raw, LAYOUT)
    assert "\n" not in str(err.value)


def test_selection_the_engine_lacks():
    layout = {**LAYOUT, "selections": {"final": {"num_layers": 1}}}
    with pytest.raises(ValueError, match="norms='all' selects no norm of the engine's TinyLlama"):
        check_spec({"seed": 0, "mind": 1, "sigma": 0.1}, layout)


def test_salt_rule():
    spec = MindSpec(seed=4, mind=2, sigma=0.3)
    own = mind_salt(spec)
    assert own == "manyminds:4:2:0.3:all:additive:0"  # the scalar form's salt is unchanged: cached blocks stay valid
    assert mind_salt(MindSpec(seed=4, mind=2, sigma=[0.3, 0.1])) == "manyminds:4:2:0.3,0.1:all:additive:0"
    assert salt_for(spec, None) == own and salt_for(spec, "") == own
    assert salt_for(spec, "user") == f"user|{own}"
    assert salt_for(spec, f"user|{own}") == f"user|{own}"  # idempotent: the client and the engine may both salt
    other = mind_salt(MindSpec(seed=4, mind=3, sigma=0.3))
    assert salt_for(spec, other) == f"{other}|{own}"  # another mind's salt is not this mind's
    for plain in (None, MindSpec(seed=4, mind=-1, sigma=0.3), MindSpec(seed=4, mind=2, sigma=0.0)):
        assert salt_for(plain, None) is None and salt_for(plain, "user") == "user"  # plain: the plain cache
