"""The XLA:CPU setting medjax's entry points apply (main, the benchmark, the tests' conftest).

jaxlib 0.10 runs convolutions (and elementwise fusions) through YNNPACK, which used one core
here; Eigen's convolutions use them all. With YNNPACK kept for matmuls and reductions only, a
3x3 64-channel convolution's weight gradient on 128 28x28 images took 69 ms instead of 284 ms on
2 cores, and the benchmark's CNNs trained 1.4 to 1.8 times faster (experiments/results/
benchmark.md). Importing medjax changes nothing; a program that wants this calls
`leave_convolutions_to_eigen()` before JAX computes anything.
"""

import importlib.metadata
import os

FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def leave_convolutions_to_eigen() -> None:
    """Adds FLAG=individual_dot,reduce to $XLA_FLAGS on jaxlib 0.10 (other versions do not know
    the flag, and an unknown flag aborts XLA); a value the user already set there is kept. Has
    no effect once JAX has started its CPU backend."""
    try:
        jaxlib = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if jaxlib.startswith("0.10.") and FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FLAG}=individual_dot,reduce".strip()
