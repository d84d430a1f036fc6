"""CT CNN on 2D axial slices of the embedded synthetic chest CT.

  python -m medjax.main --config=configs/ct_cnn.py --workdir=runs/ct_cnn

Reached test AUROC 0.99995 (0.9999540462294931) on 2 CPU cores shared with other runs (not
timed), 2026-12-08; it took 102 s on 2 idle CPU cores, 2026-12-05.
"""

from configs import smoke
from medjax import models
from medjax.settings import defaults


def get_config(arg: str = ""):
    _, smoke_run = smoke.split(arg, "configs/ct_cnn.py")
    config = defaults.get_config()
    # 64x64 slices: a stride-4 stem (small_input=False) keeps it fast on CPU
    config.model = models.settings("resnet10", width=0.25, small_input=False)
    config.trainer.num_train_steps = 800
    config.trainer.batch_size = 64
    config.trainer.eval_every_steps = 200
    config.trainer.checkpoint_every_steps = 200
    config.optimizer.learning_rate = 3e-3
    return smoke.shrink(config) if smoke_run else config
