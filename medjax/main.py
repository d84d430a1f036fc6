"""Command-line entry point.

  python -m medjax.main --config=configs/ct_cnn.py --workdir=runs/ct [--mode=train]
      [--config.optimizer.learning_rate=3e-4 ...]

`train` trains (or resumes, or on a finished workdir re-evaluates) and writes the outputs;
`evaluate` evaluates the workdir's best checkpoint on `--split` (test) without training, and
rewrites the report; `explain` writes attribution plots of the best checkpoint for the first
examples of `--split` to plots/ (also written at the end of training); `predict` scores every
example of the data the config names (say `--config.data.dir=NEW`) with the best checkpoint into
predictions/<data name>_<folder>.csv; `export` writes the best checkpoint of a finished run, with
its preprocessing, to export/ as a jax.export function and a TensorFlow SavedModel, which
`python -m medjax.infer --export=DIR/export --input=PATH` runs without medjax's training code.

`ensemble` evaluates the mean logits of several finished runs of the config (seeds, say) as
one model, in a --workdir of its own that holds no checkpoint:

  python -m medjax.main --mode=ensemble --config=configs/ehr_physionet.py --workdir=runs/ens \
      --members=runs/p12_s0,runs/p12_s1,runs/p12_s2

Members may differ from the config only in `seed` and the trainer, optimizer and loss settings.
With `--config.trainer.ensemble_size=K`, `train` trains the K seeds' runs itself, in
<workdir>/members/, and then evaluates them as an ensemble in the workdir. An ensemble's
workdir is a model to `evaluate`, `predict` with and `export` (the mean of its members' logits).

Every device is used. On several hosts, run the same command in every process with
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`, or with none of them where
SLURM (srun), Open MPI or a Cloud TPU VM launched the processes.
"""

import gc
import os
import signal
import sys
import traceback

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from medjax import workdir_lock, xla_cpu
from medjax.errors import ConfigError, NonFiniteError, Preempted

FLAGS = flags.FLAGS  # the flags main reads: absl's, or a FlagValues of a caller's (the tests)


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines medjax.main's flags on `flag_values` (importing medjax.main defines none)."""
    config_flags.DEFINE_config_file(
        "config", None, "Path to a config file.", lock_config=True, flag_values=flag_values
    )
    on = {"flag_values": flag_values}
    flags.DEFINE_string(
        "workdir", None, "Folder for checkpoints, metrics, plots and the report.", **on
    )
    flags.DEFINE_enum(
        "mode",
        "train",
        ["train", "evaluate", "explain", "predict", "export", "ensemble"],
        "What to do with the workdir.",
        **on,
    )
    flags.DEFINE_enum(
        "split", "test", ["train", "val", "test"], "The split evaluate/explain/ensemble use.",
        **on,
    )  # fmt: skip
    flags.DEFINE_list(
        "members", [], "--mode=ensemble: the finished workdirs to average, a,b,c.", **on
    )
    flags.DEFINE_bool(
        "allow_config_change", False,
        "Resume although the config or data differ from the checkpoint's.", **on,
    )  # fmt: skip
    flags.DEFINE_bool(
        "debug", False, "Show the traceback of an error medjax reports in one line.", **on
    )
    flags.DEFINE_string(
        "coordinator_address", None, "HOST:PORT of process 0 (several hosts).", **on
    )
    flags.DEFINE_integer("num_processes", None, "Number of processes (several hosts).", **on)
    flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).", **on)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)


def parse_flags(argv: list[str]) -> list[str]:
    """Parses the command line, loading the config, and reports a bad one without a traceback."""
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
    path = path.split(":", 1)[0]  # configs/medmnist.py:breastmnist names a file and an argument
    try:
        rest = FLAGS(argv)
        config = FLAGS.config  # a config file that failed to load raises here, not later
    except Exception as e:  # each kind is told apart by _parse_error; the rest re-raised
        sys.exit(f"error: {_parse_error(e, argv, path)}")
    if not isinstance(config, ml_collections.ConfigDict):
        sys.exit(
            f"error: the config file {path}: get_config() returned a {type(config).__name__}; "
            "it must return an ml_collections.ConfigDict (start from medjax/settings/defaults.py's "
            "get_config())"
        )
    return rest


def _parse_error(error: Exception, argv: list[str], path: str) -> str:
    """The line that says why the command line or its config file failed to load."""
    found = _config_error_in(error)
    if found is not None:
        return str(found)
    line = _line_in_file(error, path)
    if line is not None:
        return (
            f"the config file {path} failed to load, line {line}: {type(error).__name__}: {error}"
        )
    if isinstance(error, (AttributeError, KeyError)):  # ml_collections: --config.NO_SUCH_KEY
        key = str(error).strip("\"'")
        flag = next((a for a in argv if a.startswith("--config.") and key in a), key)
        if flag.startswith("--config.model."):
            return (
                f"unknown config key in {flag.split('=')[0]}: the config's model keys are those "
                "of its model's fields (medjax/models/<model.name>.py); check the spelling"
            )
        return (
            f"unknown config key '{key}' in {flag}; the keys are declared in "
            "medjax/settings/defaults.py (check the spelling)"
        )
    if isinstance(error, (flags.Error, OSError, TypeError, ValueError)):
        return str(error)
    raise error


def _line_in_file(error: BaseException, path: str) -> int | None:
    """The line of `path` where `error` (or an error it wraps) arose, if it did there."""
    if not path or not os.path.exists(path):
        return None
    while error is not None:
        if isinstance(error, SyntaxError) and error.filename and os.path.exists(error.filename):
            if os.path.samefile(error.filename, path):
                return error.lineno
        frames = traceback.extract_tb(error.__traceback__)
        lines = [f.lineno for f in frames if os.path.exists(f.filename)
                 and os.path.samefile(f.filename, path)]  # fmt: skip
        if lines:
            return lines[-1]
        error = error.__cause__ or error.__context__
    return None


def _config_error_in(error: BaseException | None) -> ConfigError | None:
    """The ConfigError a config file raised, under the wrappers ml_collections and absl add
    (the innermost one: ml_collections re-raises it with its traceback as the message)."""
    found = None
    while error is not None:
        found = error if isinstance(error, ConfigError) else found
        error = error.__cause__ or error.__context__
    return found


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.mode == "train":  # a run already writing there: say so before the slow imports
        try:
            workdir_lock.refuse_if_held(FLAGS.workdir, "train in")
        except ConfigError as e:
            sys.exit(f"error: {e}")
    xla_cpu.leave_convolutions_to_eigen()  # before JAX starts its backend
    import tensorflow as tf  # imported here so that --help stays fast

    tf.config.set_visible_devices([], "GPU")  # tf.data only; the accelerators are JAX's
    try:
        _run_mode()
        return
    except Preempted as e:
        kind = "interrupted" if e.signum == signal.SIGINT else "preempted"
        line, status = f"{kind}: {e}", 128 + e.signum
    except KeyboardInterrupt:  # Ctrl-C before or after the training loop, or a second one
        line = ("interrupted: stopped by Ctrl-C; the checkpoints in the workdir are intact, run "
                "the same command to continue")  # fmt: skip
        status = 128 + signal.SIGINT
    except (ConfigError, NonFiniteError) as e:
        if FLAGS.debug:
            raise
        line, status = f"error: {e}", 1
    # The traceback is gone: finalise what it held (TensorFlow's input iterators log as they
    # go), so that the message is the last line.
    gc.collect()
    print(line, file=sys.stderr)
    sys.exit(status)


def _run_mode() -> None:
    """Does what --mode asks."""
    from medjax import parallel, train
    from medjax.train import checks

    checks.check_values(FLAGS.config)
    parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    if FLAGS.members and FLAGS.mode != "ensemble":
        raise ConfigError("--members is for --mode=ensemble")
    if FLAGS.mode == "ensemble":
        train.ensemble(FLAGS.config, FLAGS.workdir, FLAGS.members, split=FLAGS.split)
    elif FLAGS.mode == "explain":
        train.explain(FLAGS.config, FLAGS.workdir, split=FLAGS.split)
    elif FLAGS.mode == "predict":
        train.predict(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == "export":
        train.export(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == "evaluate":
        train.evaluate(FLAGS.config, FLAGS.workdir, split=FLAGS.split,
                       allow_config_change=FLAGS.allow_config_change)  # fmt: skip
    else:
        train.train_run(FLAGS.config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)


def run() -> None:
    """`python -m medjax.main`: main's flags on absl's FLAGS, then main."""
    define_flags(FLAGS)
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
