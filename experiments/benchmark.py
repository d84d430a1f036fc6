"""Training speed of medjax's models, side by side with the PyTorch references.

  python experiments/benchmark.py [--torch=PYTHON] [--rounds=2]
  python experiments/benchmark.py --model=resnet18_2d --json
  python experiments/benchmark.py --config=ct_cnn --json

`--model NAME` times one canonical model (../shared/peers/README.md): forward, loss, backward
and an Adam step (lr 1e-3, fp32) on a fixed synthetic batch, the step jitted with the state
donated; it prints examples/s (the median, min and max of timed steps after warm-up, each
ended by `block_until_ready`), the compile time, the FLOPs of one training step per example
(XLA's cost analysis; for the GRU counted by hand, as the analysis counts a scan body once), the
achieved GFLOP/s and its fraction of this machine's fp32 matmul peak, measured in the same
process. `--config NAME` times a default config's real `train_step` (configs/NAME.py): compile
time, training and evaluation examples/s, the input pipeline alone (its `train_batches`
iterator), and the process's peak host memory. With `--json`, one line `RESULT {json}`, the
form of ../shared/peers/torch_bench.py.

Without either, every model and config runs in its own process; with a PyTorch interpreter
(`--torch`, or $MEDJAX_TORCH_PYTHON; see ../shared/peers/README.md to make one) each model
alternates medjax and PyTorch runs for `--rounds` rounds, so that machine drift hits both. The
results go to experiments/results/benchmark.json and benchmark.md.
"""

import argparse
import datetime
import functools
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from medjax import xla_cpu  # noqa: E402

xla_cpu.leave_convolutions_to_eigen()  # before JAX computes anything

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from medjax import models  # noqa: E402
from medjax.models import conv  # noqa: E402

TORCH_BENCH = os.path.join(os.path.dirname(REPO), "shared", "peers", "torch_bench.py")
RESULTS = os.path.join(REPO, "experiments", "results")
# Steps and warm-up steps as the PyTorch reference times them.
STEPS = {"resnet18_2d": (8, 2), "cnn3d_small": (12, 3), "gru_ehr": (100, 10), "conv_vae": (150, 20)}
BATCH = {"resnet18_2d": 128, "cnn3d_small": 32, "gru_ehr": 256, "conv_vae": 128}
BARS = {"resnet18_2d": 0.65, "cnn3d_small": 0.6, "gru_ehr": 0.9, "conv_vae": 0.75}
CONFIGS = ("ct_cnn", "ct_cnn3d", "ehr_rnn", "ct_vae")
GRU_STEPS, GRU_FEATURES, GRU_HIDDEN = 48, 111, 128


class CNN3DSmall(nn.Module):
    """The reference's 3D CNN: 4 stages of 2 x (3x3x3 conv, batch norm, ReLU), widths
    16/32/64/128, the first conv of stages 2-4 with stride 2; global average pool; linear."""

    @nn.compact
    def __call__(self, x, *, train: bool):
        for i, width in enumerate((16, 32, 64, 128)):
            for j in range(2):
                stride = 2 if i > 0 and j == 0 else 1
                x = conv.Conv(width, (3, 3, 3), stride, ((1, 1),) * 3, use_bias=False)(x)
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
                x = nn.relu(x)
        return nn.Dense(2)(x.mean(axis=(1, 2, 3)))


def _cross_entropy(logits, batch):
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()


def _binary_cross_entropy(outputs, batch):
    return optax.sigmoid_binary_cross_entropy(outputs["logits"][:, 0], batch["label"]).mean()


def _vae_loss(outputs, batch):
    """Bernoulli negative log-likelihood summed over pixels plus the analytic KL, batch mean."""
    logits = outputs["likelihood"]["logits"][0]
    rec = optax.sigmoid_binary_cross_entropy(logits, batch["image"]).sum(axis=(1, 2, 3))
    mean, log_var = outputs["posterior"]["mean"], outputs["posterior"]["log_var"]
    kl = 0.5 * (mean**2 + jnp.exp(log_var) - 1.0 - log_var).sum(-1)
    return (rec + kl).mean()


def canonical(name: str):
    """(model, batch of numpy arrays, model inputs of a batch, loss(outputs, batch))."""
    rng = np.random.default_rng(0)
    b = BATCH[name]
    labels = rng.integers(0, 2, b)
    if name == "resnet18_2d":
        model = models.create("resnet18", num_classes=2, small_input=True)
        batch = {"image": rng.normal(size=(b, 28, 28, 1)), "label": labels}
        return model, batch, lambda x: x["image"], _cross_entropy
    if name == "cnn3d_small":
        batch = {"image": rng.normal(size=(b, 28, 28, 28, 1)), "label": labels}
        return CNN3DSmall(), batch, lambda x: x["image"], _cross_entropy
    if name == "gru_ehr":
        model = models.create("gru", hidden_size=GRU_HIDDEN, num_classes=1)
        shape = (b, GRU_STEPS, GRU_FEATURES // 3)
        batch = {k: rng.normal(size=shape) for k in ("values", "mask", "delta")}
        batch["delta"] = np.abs(batch["delta"])  # hours since the last observation
        batch |= {"lengths": rng.integers(1, GRU_STEPS + 1, b), "static": np.zeros((b, 0))}
        return model, batch | {"label": labels.astype(float)}, lambda x: x, _binary_cross_entropy
    if name == "conv_vae":
        model = models.create("conv_vae", latent_size=32, widths=(32, 64))
        batch = {"image": rng.random((b, 28, 28, 1)).round()}
        return model, batch, lambda x: x["image"], _vae_loss
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(BATCH)}")


def _gru_flops_per_example() -> float:
    """Matmul FLOPs of one GRU training step per example: forward 2 * 3H(I + H) per time step,
    the backward pass twice that."""
    return 3 * GRU_STEPS * 2 * 3 * GRU_HIDDEN * (GRU_FEATURES + GRU_HIDDEN)


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> float:
    """This machine's fp32 matmul rate now: the median of `reps` timed n x n products."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        dot(a, a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def _timed(step, state, args, steps: int, warmup: int):
    """(state, step times in s): `warmup` untimed steps, then `steps` timed ones."""
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        state, out = step(state, *args)
        jax.block_until_ready((state, out))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return state, times


def _compiled(fn, *args):
    """(fn lowered and compiled for args, seconds it took, XLA's FLOPs of one call)."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return compiled, seconds, float(cost.get("flops", 0.0))


def _throughput(batch_size: int, times: list[float]) -> dict:
    return {
        "ex_s_median": batch_size / statistics.median(times),
        "ex_s_min": batch_size / max(times),
        "ex_s_max": batch_size / min(times),
        "step_times": [round(t, 6) for t in times],
    }


def bench_model(name: str, steps: int | None = None, warmup: int | None = None) -> dict:
    """One canonical model's training step: throughput, compile time and FLOPs."""
    default_steps, default_warmup = STEPS[name]
    steps, warmup = steps or default_steps, warmup or default_warmup
    model, batch, inputs_of, loss_of = canonical(name)
    batch = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32 if x.dtype == float else None), batch)
    key = jax.random.key(0)
    variables = model.init({"params": key, "latent": key}, inputs_of(batch), train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    tx = optax.adam(1e-3)

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state, batch, key):
        params, batch_stats, opt_state = state

        def loss_fn(params):
            outputs, updates = model.apply(
                {"params": params, "batch_stats": batch_stats},
                inputs_of(batch),
                train=True,
                rngs={"latent": key, "dropout": key},
                mutable=["batch_stats"],
            )
            return loss_of(outputs, batch), updates.get("batch_stats", {})

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    state = (params, batch_stats, tx.init(params))
    step, compile_s, flops = _compiled(train_step, state, batch, key)
    size = BATCH[name]
    flops_per_example = _gru_flops_per_example() if name == "gru_ehr" else flops / size
    first = time.perf_counter()
    state, loss_first = step(state, batch, key)
    loss_first = float(loss_first)
    first_step_s = time.perf_counter() - first
    _, times = _timed(step, state, (batch, key), steps, warmup - 1)
    peak = matmul_peak_gflops()
    result = {"framework": "medjax", "model": name, "batch": size, "steps": steps}
    result |= {"warmup": warmup, **_throughput(size, times), "compile_s": compile_s}
    gflops = flops_per_example * result["ex_s_median"] / 1e9
    result |= {"first_step_s": first_step_s, "loss_first": loss_first}
    result |= {"flops_per_example": flops_per_example, "gflop_s": gflops}
    result |= {"matmul_peak_gflop_s": peak, "peak_fraction": gflops / peak}
    result |= {"params": sum(x.size for x in jax.tree.leaves(params)), **_versions()}
    return result


def bench_config(name: str, steps: int = 20, warmup: int = 3, batches: int = 30) -> dict:
    """A default config's real `train_step` and `eval_step`, and its input pipeline alone."""
    from medjax import optim, parallel  # noqa: PLC0415 (heavy: TensorFlow)
    from medjax.tasks import build_task  # noqa: PLC0415
    from medjax.train import state as train_state  # noqa: PLC0415
    from medjax.train import steps as train_steps  # noqa: PLC0415

    config = importlib.import_module(f"configs.{name}").get_config()
    start = time.perf_counter()
    task = build_task(config)
    build_s = time.perf_counter() - start
    tx, _ = optim.create_optimizer(config.optimizer, config.trainer.num_train_steps)
    mesh = parallel.data_mesh()
    create = functools.partial(train_state.create_train_state, task, tx, ema_decay=0.0)
    keys = jax.random.split(jax.random.key(config.seed))
    state = jax.jit(create, out_shardings=parallel.replicated(mesh))(*keys)

    start = time.perf_counter()
    iterator = task.train_batches(0)
    host_batches = [next(iterator)]  # the first batch pays for starting tf.data
    first_batch_s = time.perf_counter() - start
    start = time.perf_counter()
    host_batches += [next(iterator) for _ in range(batches)]
    pipeline_ex_s = batches * config.trainer.batch_size / (time.perf_counter() - start)

    device_batches = [parallel.shard_batch(b, mesh) for b in host_batches[:4]]
    step = functools.partial(train_steps.train_step, task=task, accumulation_steps=1)
    step = jax.jit(step, donate_argnums=0)
    compiled, compile_s, _ = _compiled(step, state, device_batches[0])
    times = []
    for i in range(warmup + steps):
        begin = time.perf_counter()
        state, scalars = compiled(state, device_batches[i % len(device_batches)])
        jax.block_until_ready((state, scalars))
        if i >= warmup:
            times.append(time.perf_counter() - begin)
    train_ex_s = config.trainer.batch_size / statistics.median(times)

    eval_batch = parallel.shard_batch(next(task.eval_batches("val")), mesh)
    evaluate = jax.jit(functools.partial(train_steps.eval_step, task=task))
    compiled_eval, eval_compile_s, _ = _compiled(evaluate, state, eval_batch)
    eval_times = _timed(lambda s, b: (s, compiled_eval(s, b)), state, (eval_batch,), 5, 1)[1]
    eval_size = len(eval_batch["valid"])
    return {
        "framework": "medjax",
        "config": name,
        "batch": config.trainer.batch_size,
        "build_task_s": build_s,
        "first_batch_s": first_batch_s,
        "compile_s": compile_s,
        **_throughput(config.trainer.batch_size, times),
        "eval_batch": eval_size,
        "eval_compile_s": eval_compile_s,
        "eval_ex_s": eval_size / statistics.median(eval_times),
        "pipeline_ex_s": pipeline_ex_s,
        "pipeline_over_train": pipeline_ex_s / train_ex_s,
        "peak_host_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **_versions(),
    }


def _versions() -> dict:
    import flax  # noqa: PLC0415

    return {"jax": jax.__version__, "jaxlib": jax.lib.__version__, "flax": flax.__version__,
            "backend": jax.default_backend()}  # fmt: skip


def _run(command: list[str]) -> dict:
    """Runs a benchmark process; its RESULT line as a dict (or the error it printed)."""
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"error": (proc.stderr or proc.stdout)[-2000:]}


def _default_torch() -> str | None:
    path = os.environ.get("MEDJAX_TORCH_PYTHON", "")
    return path if os.path.exists(path) else None


def run_all(torch_python: str | None, rounds: int, models, configs) -> dict:
    me = [sys.executable, os.path.abspath(__file__), "--json"]
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": portable_command(sys.argv), "host": platform.node(),
               "cpus": os.cpu_count(), "load_before": os.getloadavg(), "models": {},
               "configs": {}}  # fmt: skip
    for name in models:
        runs = {"medjax": [], "torch": []}
        for r in range(rounds):
            runs["medjax"].append(_run([*me, "--model", name]))
            print(f"{name} round {r} medjax: {_summary(runs['medjax'][-1])}", flush=True)
            if torch_python:
                torch_cmd = [torch_python, TORCH_BENCH, "--model", name, "--json"]
                runs["torch"].append(_run(torch_cmd))
                print(f"{name} round {r} torch: {_summary(runs['torch'][-1])}", flush=True)
        results["models"][name] = runs | _ratios(runs)
        if "ratio_median" in results["models"][name]:
            print(f"{name}: medjax/PyTorch {results['models'][name]['ratios']}", flush=True)
    for name in configs:
        results["configs"][name] = _run([*me, "--config", name])
        print(f"config {name}: {_summary(results['configs'][name])}", flush=True)
    results["load_after"] = os.getloadavg()
    return results


def portable_command(argv: list[str]) -> str:
    """The command line as results record it, naming no path of this machine: the PyTorch
    interpreter as PYTHON, a file in the repository by its path there, any other by its name."""
    words = []
    for i, arg in enumerate(argv):
        if arg.startswith("--torch=") or (i and argv[i - 1] == "--torch"):
            words.append("--torch=PYTHON" if arg.startswith("--torch=") else "PYTHON")
        elif arg.startswith("-") and "=" in arg:
            flag, _, value = arg.partition("=")
            words.append(f"{flag}={_portable_path(value)}")
        else:
            words.append(_portable_path(arg))
    return " ".join(words)


def _portable_path(value: str) -> str:
    if not os.path.isabs(value):
        return value
    inside = os.path.relpath(value, REPO)
    return os.path.basename(value) if inside.startswith(os.pardir) else inside


def _summary(result: dict) -> str:
    if "error" in result:
        return "ERROR " + result["error"][-300:]
    return f"{result['ex_s_median']:.1f} ex/s ({result['ex_s_min']:.1f}-{result['ex_s_max']:.1f})"


def _ratios(runs: dict) -> dict:
    """Per round, medjax's median examples/s over PyTorch's; their median, min and max."""
    pairs = [(m, t) for m, t in zip(runs["medjax"], runs["torch"], strict=False)
             if "error" not in m and "error" not in t]  # fmt: skip
    if not pairs:
        return {}
    ratios = [m["ex_s_median"] / t["ex_s_median"] for m, t in pairs]
    return {"ratios": ratios, "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios)}  # fmt: skip


def _median_of(runs: list[dict], key: str) -> float:
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else float("nan")


def markdown(results: dict) -> str:
    """The results as a markdown report."""
    first = next((r for m in results["models"].values() for r in m["medjax"] if "jax" in r), {})
    torch_version = next((r["torch"] for m in results["models"].values() for r in m["torch"]
                          if "torch" in r), "not run")  # fmt: skip
    lines = [
        "# medjax training speed",
        "",
        f"Measured {results['date']} on {results['host']} ({results['cpus']} CPUs), load average"
        f" {_load(results['load_before'])} before and {_load(results['load_after'])} after;"
        f" jax {first.get('jax')}, jaxlib {first.get('jaxlib')}, flax {first.get('flax')},"
        f" torch {torch_version}. Command: `{results['command']}`.",
        "",
        "Examples/s: the median (min-max) of timed training steps (forward, loss, backward,"
        " Adam) of one run per round; the ratio is medjax's median over PyTorch eager's in the"
        " same round, the median (min-max) over rounds.",
        "",
        "| model | batch | medjax ex/s | PyTorch ex/s | medjax/PyTorch | bar | 1 - ratio |"
        " compile s | GFLOP/ex | GFLOP/s | of matmul peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results["models"].items():
        ok = [r for r in runs["medjax"] if "error" not in r]
        torch_ok = [r for r in runs["torch"] if "error" not in r]
        if not ok:
            lines.append(f"| {name} | failed: see benchmark.json | | | | | | | | | |")
            continue
        ratio = (f"{runs['ratio_median']:.2f} ({runs['ratio_min']:.2f}-{runs['ratio_max']:.2f})"
                 if "ratio_median" in runs else "-")  # fmt: skip
        distance = f"{1 - runs['ratio_median']:+.2f}" if "ratio_median" in runs else "-"
        flops, peak = _median_of(ok, "flops_per_example"), _median_of(ok, "matmul_peak_gflop_s")
        lines.append(
            f"| {name} | {ok[0]['batch']} | {_spread(ok)} | {_spread(torch_ok)} | {ratio} |"
            f" {BARS[name]} | {distance} | {_median_of(ok, 'compile_s'):.1f} |"
            f" {flops / 1e9:.3f} | {_median_of(ok, 'gflop_s'):.1f} |"
            f" {_median_of(ok, 'peak_fraction'):.0%} of {peak:.0f} |"
        )
    if results["configs"]:
        lines += [
            "",
            "Default configs (`medjax.train.steps.train_step`, one run each): training and"
            " evaluation examples/s, the input pipeline alone, and the process's peak host memory.",
            "",
            "| config | batch | train ex/s | compile s | eval ex/s | pipeline ex/s |"
            " pipeline / train | peak host MB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in results["configs"].items():
            if "error" in r:
                lines.append(f"| {name} | failed: see benchmark.json | | | | | | |")
                continue
            lines.append(
                f"| {name} | {r['batch']} | {_spread([r])} | {r['compile_s']:.1f} |"
                f" {r['eval_ex_s']:.0f} | {r['pipeline_ex_s']:.0f} |"
                f" {r['pipeline_over_train']:.1f} | {r['peak_host_mb']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def _spread(runs: list[dict]) -> str:
    if not runs:
        return "-"
    return " / ".join(f"{r['ex_s_median']:.0f} ({r['ex_s_min']:.0f}-{r['ex_s_max']:.0f})"
                      for r in runs)  # fmt: skip


def _load(load) -> str:
    return ", ".join(f"{x:.1f}" for x in load)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=list(BATCH), help="one canonical model")
    parser.add_argument("--config", choices=CONFIGS, help="one default config's train step")
    parser.add_argument("--json", action="store_true", help="print one line RESULT {json}")
    parser.add_argument("--steps", type=int, help="timed steps (--model)")
    parser.add_argument("--warmup", type=int, help="warm-up steps (--model)")
    parser.add_argument("--torch", default=_default_torch(), help="PyTorch venv's python")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per model")
    parser.add_argument("--models", default=",".join(BATCH), help="models of a full run")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="configs of a full run")
    parser.add_argument("--out", default=RESULTS, help="folder of benchmark.json and .md")
    args = parser.parse_args()
    if args.model or args.config:
        if args.model:
            result = bench_model(args.model, args.steps, args.warmup)
        else:
            result = bench_config(args.config)
        print(("RESULT " + json.dumps(result)) if args.json else json.dumps(result, indent=1))
        return
    models = [m for m in args.models.split(",") if m]
    configs = [c for c in args.configs.split(",") if c]
    results = run_all(args.torch, args.rounds, models, configs)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "benchmark.json"), "w") as f:
        json.dump(results, f, indent=1)
    report = markdown(results)
    with open(os.path.join(args.out, "benchmark.md"), "w") as f:
        f.write(report)
    print(report)


if __name__ == "__main__":
    main()
