"""GRU-D on PhysioNet 2012 set A: in-hospital death, a seeded stratified 20% of set A as test.

  python -m medjax.main --config=configs/ehr_physionet.py --workdir=runs/physionet \
      --config.data.dir=../shared/data/physionet2012

Reached test AUROC 0.796, 0.809 and 0.812 on split seeds 0, 1 and 2 (`--config.data.seed`;
mean 0.806), about a minute each on 2 CPU cores. The issue's bar of 0.85 is not met; gradient-
boosted trees on the same splits reach 0.828 (experiments/physionet2012/README.md). DIR holds
set-a.tar.gz (or set-a/) and Outcomes-a.txt as PhysioNet distributes them (likewise b, c).
`--config.data.train_sets=a,b` trains on the union of sets A and B (val and the held-out test
part drawn from it); `--config.data.test_set=b` (or c) tests on that whole set instead; 5-fold
cross-validation over A and B: experiments/crossval.py --folds=5 --config.data.train_sets=a,b.
"""

from configs import ehr_rnn


def get_config():
    config = ehr_rnn.get_config()
    config.data.name = "physionet2012"
    config.model.dropout_rate = 0.3
    config.trainer.num_train_steps = 1500
    config.trainer.eval_every_steps = 100
    config.trainer.checkpoint_every_steps = 100
    config.trainer.early_stopping_patience = 6
    config.optimizer.learning_rate = 3e-4
    config.optimizer.weight_decay = 1e-3
    return config
