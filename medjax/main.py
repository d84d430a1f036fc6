"""Command-line entry point.

  python -m medjax.main --config=configs/ct_cnn.py --workdir=runs/ct [--mode=train]
      [--config.optimizer.learning_rate=3e-4 ...]

`train` trains (or resumes, or on a finished workdir re-evaluates) and writes the outputs;
`evaluate` evaluates the workdir's best checkpoint on `--split` (test) without training, and
rewrites the report; `explain` writes attribution plots of the best checkpoint for the first
examples of `--split` to plots/ (also written at the end of training); `predict` scores every
example of the data the config names (say `--config.data.dir=NEW`) with the best checkpoint into
predictions/<data name>_<folder>.csv.

`ensemble` evaluates the mean logits of several finished runs of the config (seeds, say) as
one model, in a --workdir of its own that holds no checkpoint:

  python -m medjax.main --mode=ensemble --config=configs/ehr_physionet.py --workdir=runs/ens \
      --members=runs/p12_s0,runs/p12_s1,runs/p12_s2

Members may differ from the config only in `seed` and the trainer, optimizer and loss settings.
With `--config.trainer.ensemble_size=K`, `train` trains the K seeds' runs itself, in
<workdir>/members/, and then evaluates them as an ensemble in the workdir.

Every device is used. On several hosts, run the same command in every process with
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`, or with none of them where
SLURM (srun), Open MPI or a Cloud TPU VM launched the processes.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from medjax import xla_cpu
from medjax.errors import ConfigError, NonFiniteError, Preempted

PREEMPTED_EXIT_STATUS = 143  # 128 + SIGTERM, what the signal would have given

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics, plots and the report.")
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "evaluate", "explain", "predict", "ensemble"],
    "What to do with the workdir.",
)
flags.DEFINE_enum(
    "split", "test", ["train", "val", "test"], "The split evaluate/explain/ensemble use."
)
flags.DEFINE_list("members", [], "--mode=ensemble: the finished workdirs to average, a,b,c.")
flags.DEFINE_bool(
    "allow_config_change", False, "Resume although the config or data differ from the checkpoint's."
)
flags.DEFINE_bool("debug", False, "Show the traceback of an error medjax reports in one line.")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (several hosts).")
flags.DEFINE_integer("num_processes", None, "Number of processes (several hosts).")
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
    """Parses the command line, loading the config, and reports a bad one without a traceback."""
    try:
        rest = FLAGS(argv)
        FLAGS.config.keys()  # a config file that failed to load raises here, not later
        return rest
    except (AttributeError, KeyError) as e:  # raised by ml_collections for --config.NO_SUCH_KEY
        key = str(e).strip("\"'")
        flag = next((a for a in argv if a.startswith("--config.") and key in a), key)
        sys.exit(
            f"error: unknown config key '{key}' in {flag}; the keys are declared in "
            "configs/default.py (check the spelling)"
        )
    except (flags.Error, OSError, TypeError, ValueError) as e:
        sys.exit(f"error: {_config_error_in(e) or e}")


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
    xla_cpu.leave_convolutions_to_eigen()  # before JAX starts its backend
    import tensorflow as tf  # imported here so that --help stays fast

    tf.config.set_visible_devices([], "GPU")  # tf.data only; the accelerators are JAX's
    from medjax import parallel, train

    try:
        parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        if FLAGS.members and FLAGS.mode != "ensemble":
            raise ConfigError("--members is for --mode=ensemble")
        if FLAGS.mode == "ensemble":
            train.ensemble(FLAGS.config, FLAGS.workdir, FLAGS.members, split=FLAGS.split)
            return
        if FLAGS.mode == "explain":
            train.explain(FLAGS.config, FLAGS.workdir, split=FLAGS.split)
            return
        if FLAGS.mode == "predict":
            train.predict(FLAGS.config, FLAGS.workdir)
            return
        if FLAGS.mode == "evaluate":
            train.evaluate(
                FLAGS.config,
                FLAGS.workdir,
                split=FLAGS.split,
                allow_config_change=FLAGS.allow_config_change,
            )
            return
        run = (
            train.train_ensemble
            if FLAGS.config.trainer.ensemble_size > 1
            else train.train_and_evaluate
        )
        run(FLAGS.config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)
    except (ConfigError, NonFiniteError, Preempted) as e:
        if FLAGS.debug:
            raise
        print(f"{'preempted' if isinstance(e, Preempted) else 'error'}: {e}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_STATUS if isinstance(e, Preempted) else 1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
