"""Peak host memory of one private step: group-norm ResNet-18 (28) at batch 256, on CPU.

  python experiments/privacy/memory.py --microbatch_size=32

Builds the model MedMNIST's ResNet-18 (28) uses (width 1, 3x3 stride-1 stem, no max-pool; group
norm) on 28x28x1 inputs, runs one DP-SGD step (medjax.train.steps.train_step with a privacy
plan) on a batch of 256 examples, and prints the peak resident memory of this process
(resource.getrusage's ru_maxrss: compilation included) and the step's time. Run it in a fresh
process: the peak covers everything the process did.
"""

import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from medjax import losses, models, optim, privacy
from medjax.settings import defaults
from medjax.tasks.task import Task
from medjax.train import steps
from medjax.train.state import create_train_state

flags.DEFINE_integer("batch_size", 256, "Examples in the step (all valid).")
flags.DEFINE_integer("microbatch_size", 32, "privacy.microbatch_size; 0: all at once.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    model = models.create("resnet18", num_classes=2, width=1.0, norm="group", small_input=True)
    batch_size = FLAGS.batch_size
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.uniform(-1, 1, (batch_size, 28, 28, 1)).astype(np.float32),
        "label": rng.integers(0, 2, batch_size).astype(np.int32),
        "valid": np.ones(batch_size, bool),
    }
    task = Task(
        model=model,
        model_inputs=lambda b: b["image"],
        example_batch={k: v[:1] for k, v in batch.items()},
        loss_fn=lambda logits, b, step: losses.softmax_cross_entropy(logits, b["label"]),
        **dict.fromkeys(("eval_outputs_fn", "compute_metrics", "metric_intervals",
                         "train_batches", "eval_batches", "write_outputs", "split_sizes",
                         "data_fingerprint")),
        description="memory probe",
        selection_metrics=("loss",),
    )  # fmt: skip
    config = defaults.get_config()
    tx, _ = optim.create_optimizer(config.optimizer, 100)
    state = create_train_state(task, tx, *jax.random.split(jax.random.key(0)))
    plan = privacy.Plan(
        l2_norm_clip=1.0,
        noise_multiplier=1.0,
        expected_batch_size=batch_size,
        max_batch_size=batch_size,
        dataset_size=546,
        delta=1e-5,
        accountant="rdp",
        target_epsilon=0.0,
        microbatch_size=FLAGS.microbatch_size,
    )
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    times = []
    for _ in range(2):  # the first includes compilation
        start = time.time()
        state, scalars = steps.train_step(state, batch, task=task, plan=plan)
        jax.block_until_ready(scalars)
        times.append(time.time() - start)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(
        f"resnet18 (28) group norm, {num_params:,} parameters, batch {batch_size}, "
        f"microbatch_size {FLAGS.microbatch_size}: peak host memory {peak_gib:.2f} GiB; "
        f"step {times[1]:.1f} s (first, with compilation, {times[0]:.1f} s); "
        f"loss {float(scalars['loss']):.4f}, finite {not int(scalars['nonfinite'])}, "
        f"devices {jax.devices()}"
    )
    assert jnp.isfinite(scalars["loss"])


if __name__ == "__main__":
    app.run(main)
