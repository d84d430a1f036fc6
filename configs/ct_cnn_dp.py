"""CT CNN trained with differential privacy (DP-SGD), forked from configs/ct_cnn.py.

  python -m medjax.main --config=configs/ct_cnn_dp.py --workdir=runs/ct_cnn_dp

Measured once (seed 0, 2 CPU cores shared with other runs, 2026-12-03): test AUROC
0.950 (accuracy 0.876) at epsilon 8.00 (privacy.json: 7.99999, delta 1.7e-5, noise multiplier
0.604, sampling rate 64/6000, 800 steps), in 18.6 minutes of wall time (8.0 minutes of user CPU
time; the shared cores made the wall time longer than an idle machine's). The same config with
--config.privacy.enabled=false reached test AUROC 0.9997 in 3.1 minutes.

Group norm instead of batch norm (batch statistics mix examples, and private training refuses
them); Poisson-sampled batches of 64 expected examples, each example's gradient clipped to norm
1, and the noise solved so that the planned steps spend epsilon 8 at delta = 1 / (10 N).
privacy.json in the workdir states what was spent.
"""

from configs import ct_cnn, smoke


def get_config(arg: str = ""):
    _, smoke_run = smoke.split(arg, "configs/ct_cnn_dp.py")
    config = ct_cnn.get_config()
    config.model.norm = "group"
    config.privacy.enabled = True
    config.privacy.l2_norm_clip = 1.0
    config.privacy.target_epsilon = 8.0
    config.privacy.microbatch_size = 16
    config.optimizer.grad_clip_norm = 0.0  # examples are clipped one by one instead
    return smoke.shrink(config) if smoke_run else config
