"""Non-sequential reference models on the splits the RNN configs use: how high can AUROC go?

  python experiments/physionet2012/baselines.py --data_dir=../shared/data/physionet2012 \
      --seeds=0,1,2 [--train_sets=a --test_set=b | --train_sets=a,b --folds=5]

For each split seed (config.data.seed of configs/ehr_physionet.py), or with --folds=K for each
fold of K-fold cross-validation over the training sets (seeded by the first of --seeds), it
loads the same train/val/test split with the same training-only normalisation as the RNNs
(--train_sets and --test_set are config.data.train_sets and test_set), summarises each stay per
variable (mean, min, max, first and last value, log count of observations) plus the static
descriptors, and fits logistic regression and gradient-boosted trees (scikit-learn: `pip install
-e '.[experiments]'`) on training stays only. It prints val and test AUROC per split, and their
means with the test AUROC's standard deviation (ddof=1) over the splits.
"""

import numpy as np
from absl import app, flags
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from configs import ehr_physionet
from medjax.data import icu_series
from medjax.stats import metrics

flags.DEFINE_string("data_dir", None, "Folder with set-x.tar.gz (or set-x/) and Outcomes-x.txt.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Split seeds (config.data.seed).")
flags.DEFINE_string("train_sets", "a", "config.data.train_sets: the sets trained on, e.g. a,b.")
flags.DEFINE_string("test_set", "", "config.data.test_set: '' (a held-out part) or a, b, c.")
flags.DEFINE_integer("folds", 0, "K >= 2: K-fold cross-validation over --train_sets instead.")
FLAGS = flags.FLAGS

MODELS = {
    "logistic regression": lambda: LogisticRegression(C=0.05, max_iter=2000),
    "gradient-boosted trees": lambda: HistGradientBoostingClassifier(
        max_iter=300, learning_rate=0.05, max_leaf_nodes=15, random_state=0
    ),
}


def summary_features(split: dict[str, np.ndarray]) -> np.ndarray:
    """[N, 6V + S]: per variable mean, min, max, first, last (0 if never seen), log1p(count)."""
    values, mask = split["values"], split["mask"] > 0
    count = mask.sum(1)
    seen = count > 0
    mean = np.where(mask, values, 0).sum(1) / np.maximum(count, 1)
    low = np.where(seen, np.where(mask, values, np.inf).min(1), 0)
    high = np.where(seen, np.where(mask, values, -np.inf).max(1), 0)
    steps = np.arange(values.shape[1])[None, :, None]
    first_step = np.where(mask, steps, values.shape[1] - 1).min(1)
    last_step = np.where(mask, steps, 0).max(1)
    first = np.where(seen, np.take_along_axis(values, first_step[:, None], 1)[:, 0], 0)
    last = np.where(seen, np.take_along_axis(values, last_step[:, None], 1)[:, 0], 0)
    return np.concatenate([mean, low, high, first, last, np.log1p(count), split["static"]], 1)


def splits_to_evaluate() -> list[tuple[str, dict]]:
    """(name, config.data overrides) of each split: the split seeds, or the folds."""
    if FLAGS.folds:
        seed = int(FLAGS.seeds[0])
        return [
            (f"fold {k}", dict(num_folds=FLAGS.folds, fold=k, seed=seed))
            for k in range(FLAGS.folds)
        ]
    return [(f"seed {seed}", dict(seed=int(seed))) for seed in FLAGS.seeds]


def main(argv):
    del argv
    results = {name: [] for name in MODELS}
    runs = splits_to_evaluate()
    for run, overrides in runs:
        config = ehr_physionet.get_config()
        config.data.update(
            dir=FLAGS.data_dir, train_sets=FLAGS.train_sets, test_set=FLAGS.test_set, **overrides
        )
        data = icu_series.load(config.data)
        print(f"{run}: {data.description}")
        splits = data.splits
        features = {name: summary_features(split) for name, split in splits.items()}
        for name, make in MODELS.items():
            model = make().fit(features["train"], splits["train"]["labels"])
            val, test = (
                metrics.roc_auc(splits[s]["labels"], model.predict_proba(features[s])[:, 1])
                for s in ("val", "test")
            )
            results[name].append((val, test))
            print(f"{run} {name}: val AUROC {val:.3f}, test AUROC {test:.3f}")
    for name, pairs in results.items():
        val, test = np.array(pairs).T
        spread = f" ± {test.std(ddof=1):.3f} (sd)" if len(test) > 1 else ""
        mean = f"val AUROC {val.mean():.3f}, test AUROC {test.mean():.3f}{spread}"
        print(f"{name}, mean over {len(runs)} splits: {mean}")


if __name__ == "__main__":
    flags.mark_flag_as_required("data_dir")
    app.run(main)
