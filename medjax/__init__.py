"""medjax: JAX/Flax models, training and honest evaluation for medical images and ICU series.

Importing medjax sets one XLA:CPU flag, before JAX starts its backend. jaxlib 0.10 runs
convolutions (and elementwise fusions) through YNNPACK, which used one core here; Eigen's
convolutions use them all. With YNNPACK kept for matmuls and reductions only, a 3x3
64-channel convolution's weight gradient on 128 28x28 images took 69 ms instead of 284 ms on 2
cores, and the benchmark's CNNs trained 1.4 to 1.8 times faster (experiments/results/
benchmark.md). The flag is known to jaxlib 0.10, so other versions are left alone; a value
already in $XLA_FLAGS is kept; and it has no effect once JAX has computed something.
"""

import importlib.metadata
import os

_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def _leave_convolutions_to_eigen():
    try:
        jaxlib = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if jaxlib.startswith("0.10.") and _FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}=individual_dot,reduce".strip()


_leave_convolutions_to_eigen()
