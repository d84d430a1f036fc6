"""The smoke variant of every shipped config: `--config=configs/ct_cnn.py:smoke` (or
`configs/medmnist.py:breastmnist,smoke`) runs the same config for a few steps, on a few
synthetic patients, with a tiny model: to try a change in seconds; the tests run these.

  python -m medjax.main --config=configs/ct_cnn.py:smoke --workdir=runs/smoke
"""

from medjax.errors import ConfigError


def split(arg: str, path: str, takes_argument: bool = False) -> tuple[str, bool]:
    """(the config's own argument, whether `smoke` was asked for) from `path`'s ARG in
    `--config=path:ARG`: ARG is `smoke`, or with `takes_argument` `VALUE` or `VALUE,smoke`."""
    value, _, rest = arg.partition(",") if takes_argument else ("", "", arg)
    if value == "smoke":
        value, rest = "", "smoke"
    if rest not in ("", "smoke") or (value and not takes_argument):
        usage = f"{path}:VALUE or {path}:VALUE,smoke" if takes_argument else f"{path}:smoke"
        raise ConfigError(f"--config={path}:{arg}: the argument after the colon is {usage}")
    return value, rest == "smoke"


def shrink(config, *, image_shape=None, steps=6):
    """Makes `config` tiny: a few steps on a few synthetic patients (real data keeps its size),
    images of 32x32 (volumes 16^3) unless `image_shape`, the model's widths small."""
    data, trainer = config.data, config.trainer
    data.image_shape = image_shape or ((32, 32) if len(data.image_shape) == 2 else (16,) * 3)
    data.num_train, data.num_val, data.num_test = 96, 40, 48
    trainer.num_train_steps = steps
    trainer.batch_size = 16
    trainer.eval_batch_size = 32  # 40 and 48 examples: the last batch is padded
    trainer.log_every_steps = 2
    trainer.eval_every_steps = 3
    trainer.checkpoint_every_steps = 3
    config.optimizer.warmup_steps = 1
    for key, tiny in (("width", 0.125), ("hidden_size", 16)):
        if key in config.model:
            config.model[key] = tiny
    config.explain.num_examples = 0  # tests that need explanations ask for them
    return config
