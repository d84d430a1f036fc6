"""A model is one module: a new file beside medjax/models' and a forked config train, evaluate
and explain it (or refuse what it lacks) with no other file edited."""

import json
import os
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import pytest

import medjax.models
from medjax import explain, models
from medjax.errors import ConfigError

MLP = '''
"""A small MLP over the flattened image: a model of one file."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class Model(nn.Module):
    num_classes: int
    hidden: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train):
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)
'''
FORKED_CONFIG = """
from configs import ct_cnn


def get_config(arg=""):
    config = ct_cnn.get_config("smoke")
    config.model = {"name": "door_mlp", "hidden": 8}
    return config
"""


@pytest.fixture
def door_mlp(tmp_path, monkeypatch):
    """medjax.models.door_mlp, found where medjax/models' own modules are (its __path__), and a
    config forked from configs/ct_cnn.py:smoke that chooses it: the config's path."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "door_mlp.py").write_text(MLP)
    paths = [*medjax.models.__path__, str(tmp_path / "models")]
    monkeypatch.setattr(medjax.models, "__path__", paths)
    (tmp_path / "my_config.py").write_text(textwrap.dedent(FORKED_CONFIG))
    yield str(tmp_path / "my_config.py")
    sys.modules.pop("medjax.models.door_mlp", None)


def test_a_model_of_one_file_trains_evaluates_and_explain_names_what_it_lacks(
    door_mlp, run_main, tmp_path
):
    workdir = tmp_path / "run"
    status, err = run_main(f"--config={door_mlp}", f"--workdir={workdir}")
    assert status == 0, err
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    (test,) = [line for line in lines if line["split"] == "test"]
    assert 0 <= test["auroc"] <= 1 and test["step"] == 6, test
    assert json.loads((workdir / "config.json").read_text())["model"] == {
        "name": "door_mlp",
        "hidden": 8,
    }
    before = sorted(os.listdir(workdir))
    status, err = run_main(
        f"--config={door_mlp}", f"--workdir={workdir}", "--mode=explain",
        "--config.explain.num_examples=2",
    )  # fmt: skip
    assert status == 1
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(
            "Grad-CAM needs the last feature maps, and medjax.models.door_mlp does not sow them: "
            "add self.sow('intermediates', 'features', maps) to its Model "
            "(medjax/models/__init__.py)"
        )
    )
    assert sorted(os.listdir(workdir)) == before
    status, err = run_main(
        f"--config={door_mlp}", f"--workdir={tmp_path / 'other'}", "--config.model.width=0.5"
    )
    assert status == 1 and "unknown config key in --config.model.width: the config's model" in err


def test_a_key_that_is_not_a_field_is_refused_naming_the_fields(door_mlp):
    config = ml_collections.ConfigDict({"name": "door_mlp", "hidden": 8, "width": 0.5})
    with pytest.raises(ConfigError, match=r"^model.width is not a field of medjax.models.door_mlp"
                       r"'s Model; its fields: hidden$"):  # fmt: skip
        models.from_config(config, num_classes=2)
    assert models.settings("door_mlp").to_dict() == {"name": "door_mlp", "hidden": 16}
    with pytest.raises(ConfigError, match="'no_such_model' is not a model.*door_mlp"):
        models.settings("no_such_model")


class SowsButIgnoresThePerturbation(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
        self.sow("intermediates", "features", x)
        return nn.Dense(2, name="head")(jnp.mean(x, axis=(1, 2)))


def test_gradcam_refuses_a_model_that_does_not_read_the_perturbation():
    model, x = SowsButIgnoresThePerturbation(), jnp.ones((1, 4, 4, 1))
    variables = model.init(jax.random.key(0), x, train=False)
    with pytest.raises(ConfigError, match="does not read the perturbations/features variable"):
        explain.check_gradcam(model, variables, x)
    resnet = models.create("resnet10", num_classes=2, width=0.125, small_input=True)
    explain.check_gradcam(resnet, resnet.init(jax.random.key(0), x, train=False), x)  # passes


def test_an_older_flat_model_section_compares_in_todays_keys():
    from medjax.train import run_config

    # An older run stored every model's keys, some under old names; JSON stores tuples as lists.
    older = {"model.name": "conv_vae", "model.vae_widths": [16, 32], "model.hidden_size": 64}
    today = {"model.name": "conv_vae", "model.widths": [16, 32]}
    assert run_config.config_changes(older, today) == []
    assert run_config.config_changes({"model.name": "conv_vae", "model.widths": [32, 64]},
                                     {"model.name": "conv_vae"}) == []  # the default  # fmt: skip
    assert run_config.config_changes(older, {"model.name": "conv_vae"}) == [
        "model.widths: [16, 32] -> [32, 64]"
    ]
