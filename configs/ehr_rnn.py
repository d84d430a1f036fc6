"""GRU-D on ICU time series: in-hospital death from the first 48 hours, synthetic cohort.

  python -m medjax.main --config=configs/ehr_rnn.py --workdir=runs/ehr

Reached test AUROC 0.973 (best checkpoint at step 600 of 1000) in 62 s on 2 CPU cores shared
with other work, 2026-12-07.

Variants: `--config.model.name=gru` or `lstm` (GRU-Simple: values, mask and time since last
observation as inputs), `--config.data.imputation=forward_fill`. Real data:
`--config.data.name=physionet2012 --config.data.dir=DIR` (DIR holds set-a.tar.gz or set-a/ and
Outcomes-a.txt; `--config.data.train_sets=a,b` trains on sets A and B, `--config.data.test_set=c`
tests on the whole of set C rather than on a held-out part of the training sets).
"""

from configs import smoke
from medjax import models
from medjax.settings import defaults


def get_config(arg: str = ""):
    _, smoke_run = smoke.split(arg, "configs/ehr_rnn.py")
    config = defaults.get_config()
    config.task = "ehr"
    config.data.name = "synthetic_ehr"
    config.data.num_train = 4000
    config.data.num_val = 1000
    config.data.num_test = 2000
    config.model = models.settings("gru_d", hidden_size=64, dropout_rate=0.2)
    config.trainer.num_train_steps = 1000
    config.trainer.batch_size = 64
    config.trainer.eval_batch_size = 512
    config.trainer.eval_every_steps = 200
    config.trainer.checkpoint_every_steps = 200
    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 1e-4
    return smoke.shrink(config) if smoke_run else config
