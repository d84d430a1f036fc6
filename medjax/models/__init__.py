"""Models: one module per model. `model.name=X` imports `medjax.models.X` and builds its `Model`.

The contract of a model module `medjax/models/X.py`:
- It defines `Model`, a flax.linen Module. Its fields are its config keys: `config.model` holds
  `name` and any of them (a key that is not a field is refused, naming the fields); a field not
  given keeps its default. `settings(X, **values)` is that section with every key at its
  default, as configs write it (so that each can be set on the command line).
- The task supplies the fields in `SUPPLIED` that the model declares: `num_classes` (the
  outputs: classes, labels, the ICU task's 1, the contrastive embedding), `channels` (of the
  images, for a model that makes them: the VAE), `dtype` (the compute
  dtype; a model without one runs in float32 only), `norm_axis_name` (the device axis under
  pmap, for batch norm) and `input_mean` (GRU-D's); a config does not set them.
- It is called `model.apply(variables, inputs, train=...)` with `rngs={"dropout": ...}` in
  training. Inputs: images [B, H, W, C] or volumes [B, D, H, W, C] for the image tasks; the ICU
  task's dict of `values`, `mask`, `delta` [B, T, V], `lengths` [B] and `static` [B, S]. It
  returns logits [B, num_classes] (float32), or for the ICU task a dict with `logits` and,
  for `loss.per_step_weight`, `step_logits` [B, T, num_classes]; the VAE returns its dict.
- `Model.RULES` (optional) maps a field to its rule (medjax.settings.rules): checked before a
  run touches its workdir.
- Optional parts, each refused by the feature that needs it when absent, naming what is missing:
  - a Dense layer named `head` producing the logits: `init.freeze=backbone` trains only it, and
    fine-tuning from another run (`init.from_workdir`) leaves it out when its shape differs;
  - for Grad-CAM (`--mode=explain` on images): `self.sow("intermediates", "features", maps)`
    of the last feature maps [B, ..., F], and `maps + self.get_variable("perturbations",
    "features")` when `self.has_variable("perturbations", "features")`, after the sow;
  - for pretrained files (`init.from_file`): parameter names as medjax.pretrained maps
    torchvision's ResNets (`stem_conv`, `stage{i}_block{j}`, ...); other tensors match by name.
"""

import dataclasses
import importlib
import pkgutil

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from medjax.errors import ConfigError

SUPPLIED = ("num_classes", "channels", "dtype", "norm_axis_name", "input_mean")


def model_class(name: str) -> type[nn.Module]:
    """The `Model` of medjax.models.<name>; an unknown name is refused, listing the models."""
    module_name = f"{__name__}.{name}"
    try:
        module = importlib.import_module(module_name) if name.isidentifier() else None
    except ModuleNotFoundError as e:
        if e.name != module_name:  # the model's own file failed to import something
            raise
        module = None
    if module is None or not hasattr(module, "Model"):
        raise ConfigError(
            f"model.name={name!r} is not a model: medjax/models/{name}.py with a Model class. "
            f"Models: {', '.join(available())}"
        )
    return module.Model


def available() -> list[str]:
    """The names of the modules of this package that define a Model."""
    names = [m.name for m in pkgutil.iter_modules(__path__)]
    return [n for n in names if hasattr(importlib.import_module(f"{__name__}.{n}"), "Model")]


def config_keys(name: str) -> dict:
    """The model's config keys with their defaults: its fields, less those the task supplies
    and flax's own (`parent`, `name`)."""
    keys = {}
    for field in dataclasses.fields(model_class(name)):
        if field.name in (*SUPPLIED, "parent", "name") or not field.init:
            continue
        if field.default is not dataclasses.MISSING:
            keys[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            keys[field.name] = field.default_factory()
        else:
            keys[field.name] = None  # required: the config must give it
    return keys


def settings(name: str, **values) -> ml_collections.ConfigDict:
    """A config's `model` section: `name` and every key of the model, at its default or as
    given in `values`."""
    keys = config_keys(name)
    _refuse_unknown(name, values, keys)
    return ml_collections.ConfigDict({"name": name, **keys, **values})


def create(name: str, **kwargs) -> nn.Module:
    """medjax.models.<name>'s Model with these fields (supplied ones included)."""
    cls = model_class(name)
    _refuse_unknown(name, kwargs, config_keys(name), supplied=fields_of(cls))
    _check_rules(cls, kwargs)
    return cls(**kwargs)


def from_config(model_config: ml_collections.ConfigDict, **supplied) -> nn.Module:
    """The model of a config's `model` section, with what the task supplies (keys of
    `SUPPLIED`); those the model does not declare are left out, and a model without `dtype` is
    refused for a dtype other than float32, one without `num_classes` always."""
    values = model_config.to_dict()
    name = values.pop("name")
    cls = model_class(name)
    _refuse_unknown(name, values, config_keys(name))
    _check_rules(cls, values)
    declared = fields_of(cls)
    for key in ("num_classes", "dtype"):
        if (
            key in supplied
            and key not in declared
            and (key == "num_classes" or supplied[key] != jnp.float32)
        ):
            raise ConfigError(
                f"medjax.models.{name}.Model has no field {key!r}, which the task supplies "
                f"({key}={supplied[key]!r}); add it to the model (see medjax/models/__init__.py)"
            )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}  # JSON's
    try:
        return cls(**values, **{k: v for k, v in supplied.items() if k in declared})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model {name}: {e}") from None


def describe(model_config: ml_collections.ConfigDict) -> str:
    """`name (key value, ...)`, for reports."""
    values = model_config.to_dict()
    name = values.pop("name")
    return f"{name} ({', '.join(f'{k} {v}' for k, v in values.items())})"


def fields_of(cls: type[nn.Module]) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)}


def _refuse_unknown(name: str, values: dict, keys: dict, supplied=()) -> None:
    unknown = sorted(set(values) - set(keys) - set(supplied))
    if unknown:
        raise ConfigError(
            f"model.{unknown[0]} is not a field of medjax.models.{name}'s Model; its fields: "
            f"{', '.join(keys)}"
        )


def _check_rules(cls: type[nn.Module], values: dict) -> None:
    rules = getattr(cls, "RULES", {})
    broken = [
        f"model.{key}={values[key]!r} must be {rule.says}"
        for key, rule in rules.items()
        if key in values and not rule.holds(values[key])
    ]
    if broken:
        raise ConfigError("; ".join(broken))
