"""mTAN on PhysioNet 2012: in-hospital death from the first 48 h, the recommended recipe.

  python -m medjax.main --config=configs/ehr_physionet.py --workdir=runs/p12 \
      --config.data.dir=DIR --config.data.test_set=b

trains on set A (15% of it, by stay, for validation) and tests on the whole of set B, the
challenge's protocol: test AUROC 0.850, 0.848 and 0.847 for `--config.seed=0,1,2` (mean 0.848;
GRU-D 0.844), min_se_ppv 0.496, about a minute each on 2 idle CPU cores, 2026-12-05. 5-fold
cross-validation over sets A and B: 0.854 ± 0.009. Gradient-boosted trees on per-variable
summaries reach 0.850 and 0.858: experiments/physionet2012/README.md. DIR holds set-a.tar.gz
(or set-a/) and Outcomes-a.txt as PhysioNet distributes them, likewise b and c.
`--config.data.train_sets=a,b` trains on the union of sets A and B; `--config.data.test_set=''`
tests on a held-out part of the training sets instead of a whole set; 5-fold cross-validation
over A and B (protocol 2): experiments/crossval.py --folds=5 --config.data.train_sets=a,b.
GRU-D: `--config=configs/ehr_physionet.py:gru_d`.
"""

from configs import ehr_rnn, smoke
from medjax import models
from medjax.errors import ConfigError


def get_config(arg: str = ""):
    model, smoke_run = smoke.split(arg, "configs/ehr_physionet.py", takes_argument=True)
    model = model or "mtan"
    config = ehr_rnn.get_config()
    config.data.name = "physionet2012"
    if model == "mtan":
        config.model = models.settings(
            "mtan",
            hidden_size=64,
            time_features=64,
            num_heads=4,
            observation_dropout=0.3,
            dropout_rate=0.3,
        )
    elif model == "gru_d":
        config.model = models.settings("gru_d", hidden_size=64, dropout_rate=0.3)
    else:
        raise ConfigError(
            f"configs/ehr_physionet.py:{model}: the model after the colon is mtan or gru_d"
        )
    config.trainer.num_train_steps = 1500
    config.trainer.eval_every_steps = 100
    config.trainer.checkpoint_every_steps = 100
    config.trainer.early_stopping_patience = 6
    config.optimizer.learning_rate = 3e-4
    config.optimizer.weight_decay = 1e-3
    return smoke.shrink(config) if smoke_run else config
