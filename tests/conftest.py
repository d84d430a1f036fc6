"""Shared test helpers: tiny configs that run end to end in seconds."""

import atexit
import importlib
import json
import os
import shutil
import sys
import tempfile
import typing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _share_a_compilation_cache():
    """JAX's persistent compilation cache in a fresh folder for this pytest session: the tests
    compile the same tiny models again and again (each run builds a new Task, a static argument
    of the jitted steps), in the xdist workers and in the `python -m medjax.main` processes the
    tests start, which all inherit these variables; the process that made the folder removes it
    at exit. Only the tests set it: a user's runs cache nothing."""
    folder = os.environ.get("MEDJAX_TEST_COMPILATION_CACHE")
    if not (folder and os.path.isdir(folder)):  # else an xdist worker, or a script a test runs
        folder = tempfile.mkdtemp(prefix="medjax-test-jax-cache-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ.update(
        MEDJAX_TEST_COMPILATION_CACHE=folder,
        JAX_COMPILATION_CACHE_DIR=folder,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",  # the tiny models compile fast
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",  # and every entry is worth keeping
    )


_share_a_compilation_cache()

from medjax import xla_cpu  # noqa: E402

# As the entry points do, before JAX computes anything; in $XLA_FLAGS, which the xdist workers
# and the processes the tests start inherit.
xla_cpu.leave_convolutions_to_eigen()


def _set_up_tensorflow_and_jax():
    import jax
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    # In case a plugin imported jax before this file set the variables it reads at import.
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


if "_pytest" not in sys.modules:  # imported by a script the tests run (tests/parallel_steps.py)
    _set_up_tensorflow_and_jax()

import ml_collections  # noqa: E402
import pytest  # noqa: E402

from configs.smoke import shrink  # noqa: E402


def pytest_configure(config):
    """Sets up TensorFlow and JAX where the tests run: not in xdist's controller, which would
    spend seconds importing them before it starts the workers."""
    if not getattr(config.option, "numprocesses", None) or hasattr(config, "workerinput"):
        _set_up_tensorflow_and_jax()


PROCESS_FIXTURES = {"tiny_ct_cnn_command", "host_devices_env"}  # tests that start processes
RUN_FIXTURES = {"run_main", "finished_tiny_run", "tiny_ensemble"}  # trainings, runs of main


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """Marks slow, besides the tests decorated so, every test that starts `python -m
    medjax.main` or a script with several host devices, or runs medjax.main or starts from a
    finished training in this process, through the fixtures below (before -m selects by marks):
    the fast tier is the numerics.

    In an xdist worker, then puts the selected tests that start processes first, then the other
    slow ones, then the rest, each group in file order: `--dist worksteal` (pyproject's addopts)
    deals the list out in two halves and a worker that runs out takes half of what the other
    has left, from its end, so that the long tests start early and the short ones even out the
    workers' ends (`--dist loadfile` handed out whole files, those with the most tests first,
    which put the few long ones last)."""
    for item in items:
        if (PROCESS_FIXTURES | RUN_FIXTURES) & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
    result = yield
    if hasattr(config, "workerinput"):
        items.sort(  # stable: in file order within each group
            key=lambda item: (
                not PROCESS_FIXTURES & set(item.fixturenames),
                not item.get_closest_marker("slow"),
            )
        )
    return result


@pytest.fixture
def tiny():
    """tiny(name, **shrink_options): a fresh tiny copy of configs/<name>.py."""
    return lambda name, **options: shrink(
        importlib.import_module(f"configs.{name}").get_config(), **options
    )


@pytest.fixture
def tiny_config(tiny):
    return tiny("ct_cnn")


class FinishedRun(typing.NamedTuple):
    config: ml_collections.ConfigDict
    workdir: str
    test_metrics: dict
    train_steps: int  # the calls of steps.train_step that trained it


@pytest.fixture(scope="session")
def _finished_tiny_run(tmp_path_factory):
    from medjax import train
    from medjax.train import steps

    config = shrink(importlib.import_module("configs.ct_cnn").get_config())
    config.explain.update(num_examples=2, smoothgrad_samples=2, ig_steps=4)
    workdir = str(tmp_path_factory.mktemp("finished_tiny_run"))
    real_step, calls = steps.train_step, []

    def counted_step(*args, **kwargs):
        calls.append(1)
        return real_step(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(steps, "train_step", counted_step)
        test_metrics = train.train_and_evaluate(config, workdir)
    return FinishedRun(config, workdir, test_metrics, len(calls))


@pytest.fixture
def finished_tiny_run(_finished_tiny_run, tmp_path):
    """The tiny ct_cnn, explanations included, trained to the end once per xdist worker for the
    tests that start from a finished run: a FinishedRun with a copy of the config and of the
    workdir, which the test may change."""
    run = _finished_tiny_run
    workdir = shutil.copytree(run.workdir, tmp_path / "finished")
    return run._replace(
        config=run.config.copy_and_resolve_references(),
        workdir=str(workdir),
        test_metrics=dict(run.test_metrics),
    )


def _another_model(run: FinishedRun, folder) -> str:
    """A copy of the finished run, in `folder`, whose best checkpoint is another of its
    checkpoints and whose config differs in keys an ensemble's members may differ in (seed 1,
    another learning rate): a second member, without training."""
    workdir = shutil.copytree(run.workdir, folder)
    best, latest = (workdir / "checkpoints" / name for name in ("best", "latest"))
    (step,) = os.listdir(best)
    other = next(s for s in os.listdir(latest) if s.isdigit() and s != step)
    shutil.rmtree(best / step)
    shutil.copytree(latest / other, best / other)
    config = json.loads((workdir / "config.json").read_text())
    config["seed"], config["optimizer"]["learning_rate"] = 1, 0.01
    (workdir / "config.json").write_text(json.dumps(config))
    return str(workdir)


class TinyEnsemble(typing.NamedTuple):
    config: ml_collections.ConfigDict  # with trainer.ensemble_size=2
    workdir: str
    members: list[str]
    test_metrics: dict


@pytest.fixture
def tiny_ensemble(finished_tiny_run, tmp_path):
    """The tiny ct_cnn's workdir as trainer.ensemble_size=2 leaves it: members/seed_0 (the
    finished run), members/seed_1 (_another_model) and the ensemble's evaluation (train.ensemble),
    trained without a step."""
    from medjax import train

    run = finished_tiny_run
    workdir = tmp_path / "ensemble"
    members = [
        str(shutil.copytree(run.workdir, workdir / "members" / "seed_0")),
        _another_model(run, workdir / "members" / "seed_1"),
    ]
    config = run.config
    config.trainer.ensemble_size = 2
    test_metrics = train.ensemble(config, str(workdir), members)
    return TinyEnsemble(config, str(workdir), members, test_metrics)


@pytest.fixture(scope="session")
def tiny_ct_cnn_command():
    """tiny_ct_cnn_command(changes): `python -m medjax.main` on configs/ct_cnn.py:smoke, logging
    every step, with {key: value} config changes."""

    def command(changes):
        keys = {"trainer.log_every_steps": 1} | changes
        flags = [f"--config.{key}={value}" for key, value in keys.items()]
        return [sys.executable, "-m", "medjax.main", "--config=configs/ct_cnn.py:smoke", *flags]

    return command


@pytest.fixture(scope="session")
def host_devices_env():
    """host_devices_env(n): the environment of a subprocess that sees n CPU devices."""
    return lambda n: {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "JAX_PLATFORMS": "cpu",
    }


@pytest.fixture
def x64():
    """float64 for gradient checks, restored afterwards."""
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def run_main(monkeypatch, capfd):
    """run_main(*args) -> (exit status, stderr): `python -m medjax.main ARGS` from the repository
    root, run in this process (a new process would only add the imports of TensorFlow and JAX)
    on its one CPU device, with its flags on a FlagValues of their own. An exception
    medjax.main lets through (a traceback) fails the test."""
    import jax
    from absl import flags

    from medjax import main

    def run(*args):
        assert jax.device_count() == 1, "the command runs on 1 device here"
        argv = [os.path.join(REPO, "medjax", "main.py"), *args]
        monkeypatch.chdir(REPO)
        monkeypatch.setattr(sys, "argv", argv)  # where ml_collections reads --config.KEY
        flag_values = flags.FlagValues()
        main.define_flags(flag_values)
        monkeypatch.setattr(main, "FLAGS", flag_values)
        capfd.readouterr()
        try:
            main.main(main.parse_flags(argv))
            status = 0
        except SystemExit as e:  # as the interpreter reports it
            status = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            if not isinstance(e.code, int | None):
                print(e.code, file=sys.stderr)
        return status, capfd.readouterr().err

    return run
