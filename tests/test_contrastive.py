"""Self-supervised pretraining (the contrastive task), and training on a share of the labels."""

import dataclasses
import json
import os

import numpy as np
import pytest
from test_medmnist import tiny_medmnist, write_npz

from configs import simclr
from medjax import losses, train
from medjax.data import image_dataset
from medjax.errors import ConfigError
from medjax.tasks import contrastive


def _nt_xent_reference(embeddings, temperature):
    """NT-Xent written out view by view, in float64."""
    n = len(embeddings)
    z = embeddings.reshape(2 * n, -1).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    per_view = []
    for i in range(2 * n):
        others = [j for j in range(2 * n) if j != i]
        logits = np.array([z[i] @ z[j] / temperature for j in others])
        partner = others.index(i + 1 if i % 2 == 0 else i - 1)
        per_view.append(np.log(np.sum(np.exp(logits))) - logits[partner])
    return np.array(per_view).reshape(n, 2).mean(axis=1)


def test_nt_xent_matches_a_view_by_view_reference():
    embeddings = np.random.default_rng(0).normal(size=(5, 2, 7)).astype(np.float32)
    np.testing.assert_allclose(
        losses.nt_xent(embeddings, 0.3), _nt_xent_reference(embeddings, 0.3), rtol=1e-5
    )


def test_metrics_of_identical_partners_on_orthogonal_axes():
    """Each example's views equal and the examples orthogonal: every view's nearest is its
    partner, and its loss is log(e^(1/t) + 2N - 2) - 1/t."""
    n, t = 4, 0.5
    embeddings = np.repeat(np.eye(n)[:, None], 2, axis=1) * 3.0
    found = contrastive.compute_metrics({"embedding": embeddings}, temperature=t)
    assert found["pair_accuracy"] == 1.0
    assert found["loss"] == pytest.approx(np.log(np.exp(1 / t) + 2 * n - 2) - 1 / t, rel=1e-6)
    embeddings[0, 1] = embeddings[1, 0]  # view 2 of example 0 now equals example 1's views
    found = contrastive.compute_metrics({"embedding": embeddings}, temperature=t)
    assert found["pair_accuracy"] < 1.0


def test_label_fraction_keeps_a_seeded_share_of_each_class_and_whole_eval_splits(tmp_path):
    write_npz(tmp_path, "breastmnist", sizes=(40, 10, 12))
    config = tiny_medmnist("breastmnist", tmp_path)
    whole = image_dataset(config.data)
    config.data.label_fraction = 0.25
    part = image_dataset(config.data)
    labels, kept = whole.load_split("train")["labels"], part.load_split("train")["labels"]
    for c in (0, 1):
        assert np.sum(kept == c) == round(0.25 * np.sum(labels == c))
    for split in ("val", "test"):
        np.testing.assert_array_equal(part.load_split(split)["ids"], whole.load_split(split)["ids"])
    again = image_dataset(config.data).load_split("train")["ids"]
    np.testing.assert_array_equal(again, part.load_split("train")["ids"])
    config.data.seed = 1
    assert set(image_dataset(config.data).load_split("train")["ids"]) != set(again)
    for bad in (0.0, 1.5):
        config.data.label_fraction = bad
        with pytest.raises(ConfigError, match="label_fraction"):
            image_dataset(config.data)


class _Unreadable:
    """A split's labels that may be counted; any other use is recorded in `reads` and fails."""

    def __init__(self, size, reads):
        self.size, self.reads = size, reads

    def __len__(self):
        return self.size

    def _read(self, *how):
        self.reads.append(how)
        raise AssertionError(f"a label was read: {how}")

    __getattr__ = __getitem__ = __iter__ = __array__ = _read  # .shape, [i], iter, np.asarray
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _read


@pytest.mark.slow
def test_pretrain_without_labels_then_fine_tune_from_it(tmp_path, monkeypatch):
    write_npz(tmp_path, "breastmnist")
    config = simclr.get_config("breastmnist")
    tiny = tiny_medmnist("breastmnist", tmp_path)
    config.update_from_flattened_dict(
        {
            k: tiny[k.split(".")[0]][k.split(".")[1]]
            for k in (
                "data.dir",
                "data.download",
                "model.name",
                "model.width",
                "trainer.num_train_steps",
                "trainer.batch_size",
                "trainer.eval_batch_size",
                "trainer.eval_every_steps",
                "trainer.checkpoint_every_steps",
                "trainer.log_every_steps",
                "optimizer.warmup_steps",
            )
        }  # fmt: skip
    )
    reads = []  # the pretraining run gets labels it may count but not read
    real_dataset = contrastive.image_dataset

    def unlabelled(data):
        dataset = real_dataset(data)

        def load(split):
            arrays = dataset.load_split(split)
            return arrays | {"labels": _Unreadable(len(arrays["labels"]), reads)}

        return dataclasses.replace(dataset, load_split=load)

    monkeypatch.setattr(contrastive, "image_dataset", unlabelled)
    pretrained = str(tmp_path / "simclr")
    test = train.train_and_evaluate(config, pretrained)
    assert set(test) == {"loss", "pair_accuracy"} and np.isfinite(test["loss"])
    assert reads == []

    tiny.init.from_workdir = pretrained
    tiny.explain.num_examples = 0
    train.train_and_evaluate(tiny, str(tmp_path / "fine_tuned"))
    with open(os.path.join(tmp_path, "fine_tuned", "init.json")) as f:
        summary = json.load(f)
    # Every backbone tensor loads; the head has 2 outputs here and 128 there.
    assert set(summary["skipped"]) == {"params/head/bias", "params/head/kernel"}
    assert summary["unused"] == ["params/projection/bias", "params/projection/kernel"]
