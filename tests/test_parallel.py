"""Scale-out in one process: the jit, pmap and single-device steps agree on 8 CPU devices,
accumulated micro-batches equal one large batch, bfloat16 tracks float32; and bad settings.
Several processes: test_parallel_processes.py."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from medjax import parallel, train
from medjax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, host_devices_env):
    """{run: {key: array}} from tests/parallel_steps.py on 8 CPU devices."""
    out = tmp_path_factory.mktemp("parallel") / "runs.npz"
    script = os.path.join(REPO, "tests", "parallel_steps.py")
    result = subprocess.run(
        [sys.executable, script, str(out)], env=host_devices_env(8), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {}
    with np.load(out) as arrays:
        for name in arrays.files:
            run, _, key = name.partition("/")
            runs.setdefault(run, {})[key] = arrays[name]
    return runs


@pytest.mark.slow
def test_jit_sharded_pmap_and_single_device_steps_agree(runs):
    single, jit, pmap = runs["single"], runs["jit"], runs["pmap"]
    assert any(key.startswith("batch_stats/") for key in jit)  # batch norm is exercised
    # Three Adam steps from one initialisation; float32 reductions in different orders.
    for other in (single, pmap):
        assert other.keys() == jit.keys()
        for key in jit:
            np.testing.assert_allclose(other[key], jit[key], rtol=1e-5, atol=2e-6, err_msg=key)
    assert np.all(np.diff(jit["losses"]) < 0)  # the steps did train


@pytest.mark.slow
def test_accumulated_micro_batches_equal_one_large_batch(runs):
    whole = runs["whole"]
    for name in ("accumulated", "accumulated_pmap"):
        assert runs[name].keys() == whole.keys()
        for key in whole:
            np.testing.assert_allclose(runs[name][key], whole[key], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_bfloat16_training_reaches_the_float32_loss(runs):
    f32, bf16 = runs["float32"]["losses"], runs["bfloat16"]["losses"]
    assert not np.array_equal(f32, bf16)  # bfloat16 did compute in lower precision
    assert runs["bfloat16"]["params/head/kernel"].dtype == np.float32
    # Stated tolerance: the mean loss over the 60 steps within 10%, and over the last 20
    # steps within 0.005 (both runs fall from 0.77 to below 0.01).
    assert abs(bf16.mean() - f32.mean()) <= 0.1 * f32.mean()
    assert abs(bf16[-20:].mean() - f32[-20:].mean()) <= 0.005
    assert f32[-20:].mean() < 0.01


@pytest.mark.slow
def test_pmap_run_end_to_end_matches_jit_on_one_device(finished_tiny_run, tmp_path):
    config, _, expected, _ = finished_tiny_run  # trained with parallel="jit"
    config.update(parallel="pmap")
    config.explain.num_examples = 0  # no metric depends on them
    got = train.train_and_evaluate(config, str(tmp_path / "pmap"))
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name] == pytest.approx(expected[name], abs=1e-5), name


@pytest.mark.parametrize(
    "change, message",
    [
        ({"parallel": "pjit"}, "parallel='pjit' must be one of 'jit', 'pmap'"),
        ({"trainer.accumulation_steps": 0}, "trainer.accumulation_steps=0 must be an integer >= 1"),
        (
            {"trainer.accumulation_steps": 3},
            "trainer.batch_size=16 does not divide evenly over 1 devices x 3 micro-batches; "
            "use a positive multiple of 3",
        ),
    ],
)
def test_bad_scale_out_settings_are_refused(tiny_config, tmp_path, change, message):
    tiny_config.update_from_flattened_dict(change)
    with pytest.raises(ConfigError, match=re.escape(message)):
        train.train_and_evaluate(tiny_config, str(tmp_path))
    assert not os.listdir(tmp_path)  # refused before anything was written


def test_multi_host_flags_go_together():
    with pytest.raises(ConfigError, match="give all three"):
        parallel.initialize("127.0.0.1:1234", None, None)
