"""MedMNIST: metadata, the .npz reader on files written in the official format, download, and
training on 2D gray, 2D RGB, 3D and multi-label files end to end."""

import hashlib
import io
import json
import os

import numpy as np
import pytest
from conftest import shrink
from sklearn import metrics as skm

from configs import medmnist as medmnist_config
from medjax import train
from medjax.data import image_dataset, medmnist
from medjax.errors import ConfigError
from medjax.settings import defaults
from medjax.stats import metrics

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "medmnist")


def write_npz(directory, name, sizes=(24, 8, 12), *, column_labels=True, seed=0):
    """A file in MedMNIST's format for `name`, images with a label-dependent mean."""
    base, size = medmnist.parse_name(name)
    info = medmnist.INFO[base]
    spatial = (size,) * (3 if info.is_3d else 2)
    shape = (*spatial, 3) if info.channels == 3 else spatial
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(medmnist.SPLITS, sizes):
        num_classes = len(info.class_names)
        if info.multilabel:
            labels = (rng.random((n, num_classes)) < 0.3).astype(np.uint8)
            level = labels[:, :1]
        else:
            labels = rng.integers(0, num_classes, (n, 1) if column_labels else n).astype(np.uint8)
            level = labels.reshape(n, 1)
        brightness = 40 + 150 * level / max(1, num_classes - 1)
        noise = rng.normal(0, 20, (n, int(np.prod(shape))))
        images = np.clip(brightness + noise, 0, 255).astype(np.uint8).reshape(n, *shape)
        arrays |= {f"{split}_images": images, f"{split}_labels": labels}
    path = os.path.join(directory, f"{name}.npz")
    np.savez_compressed(path, **arrays)
    return path, arrays


def data_config(directory, name, download=False):
    data = defaults.get_config().data
    data.update(name=name, dir=str(directory), download=download)
    return data


class TestNames:
    @pytest.mark.parametrize(
        "name, expected",
        [("pneumoniamnist", ("pneumoniamnist", 28)), ("pathmnist_224", ("pathmnist", 224)),
         ("nodulemnist3d_64", ("nodulemnist3d", 64))],
    )  # fmt: skip
    def test_parse(self, name, expected):
        assert medmnist.parse_name(name) == expected

    @pytest.mark.parametrize("name", ["nodulemnist3d_128", "breastmnist_28", "breastmnist_x"])
    def test_sizes_that_do_not_exist(self, name):
        with pytest.raises(ConfigError, match="comes as"):
            medmnist.parse_name(name)

    def test_unknown_name_lists_the_valid_ones(self):
        with pytest.raises(ConfigError, match="pathmnist, chestmnist"):
            medmnist.parse_name("mnist")

    def test_metadata(self):
        assert len(medmnist.INFO) == 18
        assert sum(info.is_3d for info in medmnist.INFO.values()) == 6
        assert [n for n, i in medmnist.INFO.items() if i.multilabel] == ["chestmnist"]
        assert medmnist.INFO["breastmnist"].num_train == 546
        assert all(len(md5) == 32 for i in medmnist.INFO.values() for md5 in i.md5.values())


class TestRead:
    @pytest.mark.parametrize("column_labels", [True, False])
    def test_labels_n_by_1_or_flat(self, tmp_path, column_labels):
        _, arrays = write_npz(tmp_path, "breastmnist", column_labels=column_labels)
        splits = medmnist.read(str(tmp_path), "breastmnist", download=False)
        for split in medmnist.SPLITS:
            assert splits[split]["labels"].shape == (len(arrays[f"{split}_images"]),)
            np.testing.assert_array_equal(
                splits[split]["labels"], arrays[f"{split}_labels"].reshape(-1)
            )
            np.testing.assert_array_equal(splits[split]["images"], arrays[f"{split}_images"])

    def test_truncated_file_is_named(self, tmp_path):
        path, _ = write_npz(tmp_path, "breastmnist")
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        with pytest.raises(ConfigError, match=r"breastmnist\.npz is not a readable.*corrupt"):
            medmnist.read(str(tmp_path), "breastmnist", download=False)

    def test_label_outside_the_classes(self, tmp_path):
        _, arrays = write_npz(tmp_path, "breastmnist")
        arrays["val_labels"][3] = 2
        np.savez(tmp_path / "breastmnist.npz", **arrays)
        with pytest.raises(ConfigError, match=r"val_labels\[3\] = 2 is outside .* 2 classes"):
            medmnist.read(str(tmp_path), "breastmnist", download=False)

    @pytest.mark.parametrize("labels", [np.array(["benign", "malignant"]), np.array([0.0, 1.0])])
    def test_labels_that_are_not_integers(self, tmp_path, labels):
        _, arrays = write_npz(tmp_path, "breastmnist")
        arrays["test_labels"] = labels[arrays["test_labels"].reshape(-1) % 2]
        np.savez(tmp_path / "breastmnist.npz", **arrays)
        with pytest.raises(ConfigError, match=f"test_labels holds {labels.dtype} values; labels"):
            medmnist.read(str(tmp_path), "breastmnist", download=False)

    def test_file_of_another_size(self, tmp_path):
        _, arrays = write_npz(tmp_path, "breastmnist_64")
        os.rename(tmp_path / "breastmnist_64.npz", tmp_path / "breastmnist.npz")
        with pytest.raises(ConfigError, match="expected uint8 \\[N, 28, 28\\]"):
            medmnist.read(str(tmp_path), "breastmnist", download=False)

    def test_missing_file_offline_says_what_to_put_where(self, tmp_path):
        with pytest.raises(ConfigError, match=r"pneumoniamnist\.npz not found in .*zenodo"):
            medmnist.read(str(tmp_path), "pneumoniamnist", download=False)


class TestDownload:
    def serve(self, monkeypatch, payload):
        monkeypatch.setattr(
            medmnist.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload)
        )

    def test_md5_checked_and_file_placed(self, tmp_path, monkeypatch):
        path, arrays = write_npz(tmp_path, "breastmnist")
        payload = open(path, "rb").read()
        os.remove(path)
        info = medmnist.INFO["breastmnist"]
        md5 = hashlib.md5(payload).hexdigest()
        monkeypatch.setattr(medmnist, "INFO", {"breastmnist": info.__class__(
            info.task, info.class_names, info.channels, info.num_train, {28: md5})})  # fmt: skip
        self.serve(monkeypatch, payload)
        splits = medmnist.read(str(tmp_path / "new"), "breastmnist")
        np.testing.assert_array_equal(splits["test"]["images"], arrays["test_images"])
        assert os.listdir(tmp_path / "new") == ["breastmnist.npz"]

    def test_md5_mismatch_leaves_nothing(self, tmp_path, monkeypatch):
        self.serve(monkeypatch, b"not the file")
        with pytest.raises(ConfigError, match="MD5 .* expected 750601b1f35ba3300ea97c75c52ff8f6"):
            medmnist.read(str(tmp_path), "breastmnist")
        assert os.listdir(tmp_path) == []

    def test_offline(self, tmp_path, monkeypatch):
        def refuse(url, timeout):
            raise medmnist.urllib.error.URLError("no network")

        monkeypatch.setattr(medmnist.urllib.request, "urlopen", refuse)
        with pytest.raises(ConfigError, match="offline.*put it there as breastmnist.npz"):
            medmnist.read(str(tmp_path), "breastmnist")
        assert os.listdir(tmp_path) == []


class TestDataset:
    @pytest.mark.parametrize(
        "name, shape, channels, multilabel",
        [("dermamnist", (28, 28), 3, False), ("chestmnist", (28, 28), 1, True),
         ("organmnist3d", (28, 28, 28), 1, False)],
    )  # fmt: skip
    def test_shapes_and_kinds(self, tmp_path, name, shape, channels, multilabel):
        write_npz(tmp_path, name)
        dataset = image_dataset(data_config(tmp_path, name))
        assert (dataset.image_shape, dataset.channels, dataset.multilabel) == (
            shape,
            channels,
            multilabel,
        )
        assert dataset.intensity == "uint8"
        test = dataset.load_split("test")
        assert len(test["ids"]) == 12 and len(set(test["ids"])) == 12
        assert test["labels"].shape == ((12, 14) if multilabel else (12,))

    def test_folds_cover_the_official_train_and_val_and_never_the_test_split(self, tmp_path):
        _, arrays = write_npz(tmp_path, "breastmnist", sizes=(40, 20, 30))
        official = {f"breastmnist-{s}-{i}": arrays[f"{s}_images"][i]
                    for s, n in (("train", 40), ("val", 20)) for i in range(n)}  # fmt: skip
        tested = []
        for fold in range(3):
            data = data_config(tmp_path, "breastmnist")
            data.update(num_folds=3, fold=fold)
            dataset = image_dataset(data)
            assert "official test unread" in dataset.description
            splits = [dataset.load_split(split) for split in ("train", "val", "test")]
            ids = np.concatenate([split["ids"] for split in splits])
            assert sorted(ids) == sorted(official)  # each train/val image once, no test image
            for split in splits:
                for i, image in zip(split["ids"], split["images"]):
                    np.testing.assert_array_equal(image, official[i])
            tested += list(splits[2]["ids"])
        assert sorted(tested) == sorted(official)  # the folds' test splits partition them

    def test_multilabel_data_is_not_cross_validated(self, tmp_path):
        write_npz(tmp_path, "chestmnist")
        data = data_config(tmp_path, "chestmnist")
        data.update(num_folds=3, fold=0)
        with pytest.raises(ConfigError, match="chestmnist is multi-label"):
            image_dataset(data)

    def test_needs_a_dir(self):
        with pytest.raises(ConfigError, match="needs --config.data.dir"):
            image_dataset(data_config("", "breastmnist"))

    @pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data absent")
    def test_real_breastmnist(self):
        dataset = image_dataset(data_config(SHARED, "breastmnist"))
        sizes = [len(dataset.load_split(s)["labels"]) for s in medmnist.SPLITS]
        assert sizes == [546, 78, 156]
        train_labels = dataset.load_split("train")["labels"]
        assert set(np.unique(train_labels)) == {0, 1}
        assert 0.6 < train_labels.mean() < 0.8  # normal/benign (1) is the larger class


def test_multilabel_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 5)) < 0.3).astype(int)
    probs = np.clip(labels * 0.3 + rng.random((200, 5)) * 0.7, 0, 1)
    labels[:, 4] = 0  # an output with no positives is left out of the means
    out = metrics.multilabel_metrics(labels, probs)
    cols = range(4)
    assert out["auroc"] == pytest.approx(
        np.mean([skm.roc_auc_score(labels[:, c], probs[:, c]) for c in cols])
    )
    assert out["auprc"] == pytest.approx(
        np.mean([skm.average_precision_score(labels[:, c], probs[:, c]) for c in cols])
    )
    expected_acc = np.mean([skm.accuracy_score(labels[:, c], probs[:, c] >= 0.5) for c in range(5)])
    assert out["accuracy"] == pytest.approx(expected_acc)
    assert out["brier"] == pytest.approx(np.mean((probs - labels) ** 2))


def parse_command_line(*overrides, name="pneumoniamnist"):
    """The config as main.py's --config flag builds it from a command line."""
    from absl import flags
    from ml_collections import config_flags

    config_file = os.path.join(os.path.dirname(__file__), "..", "configs", "medmnist.py")
    argv = ["main.py", f"--config={config_file}:{name}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flag_values(argv)
    return flag_values.config


class TestConfigFollowsTheBatchSize:
    """PneumoniaMNIST, 4708 training images: 50 epochs of ceil(4708 / B) steps, evaluated
    num_train_steps // clip(num_train_steps // 200, 10, 50) steps apart, and checkpointed then."""

    @pytest.mark.parametrize(
        "batch_size, steps, every", [(64, 3700, 205), (256, 950, 95), (16, 14750, 295)]
    )
    def test_fifty_epochs_at_any_batch_size(self, batch_size, steps, every):
        trainer = parse_command_line(f"--config.trainer.batch_size={batch_size}").trainer
        assert trainer.batch_size == batch_size
        assert trainer.num_train_steps == steps
        assert (trainer.eval_every_steps, trainer.checkpoint_every_steps) == (every, every)
        epochs = trainer.num_train_steps * batch_size / medmnist.INFO["pneumoniamnist"].num_train
        assert 50 <= epochs < 50 * (1 + batch_size / 4708)  # the last step of an epoch may wrap

    def test_numbers_given_replace_the_formulas(self):
        trainer = parse_command_line(
            "--config.trainer.num_train_steps=500",  # 10 evaluations
            "--config.trainer.batch_size=256",
            "--config.trainer.checkpoint_every_steps=20",
        ).trainer
        assert (trainer.num_train_steps, trainer.eval_every_steps) == (500, 50)
        assert trainer.checkpoint_every_steps == 20

    def test_assigned_in_python_and_resolved_for_the_workdir(self):
        config = medmnist_config.get_config("pneumoniamnist")
        config.trainer.batch_size = 256
        resolved = config.copy_and_resolve_references()
        config.trainer.batch_size = 16
        assert resolved.trainer.num_train_steps == 950 and config.trainer.num_train_steps == 14750
        config.trainer.num_train_steps = 6
        assert (config.trainer.eval_every_steps, config.trainer.checkpoint_every_steps) == (1, 1)
        config.trainer.eval_every_steps = 3
        saved = json.loads(config.to_json_best_effort())["trainer"]  # as config.json holds it
        assert (saved["batch_size"], saved["num_train_steps"]) == (16, 6)
        assert (saved["eval_every_steps"], saved["checkpoint_every_steps"]) == (3, 3)

    def test_the_test_suites_shrink_sets_plain_numbers(self):
        trainer = shrink(medmnist_config.get_config("breastmnist")).trainer
        assert (trainer.batch_size, trainer.num_train_steps) == (16, 6)
        assert (trainer.eval_every_steps, trainer.checkpoint_every_steps) == (3, 3)


def tiny_medmnist(name, directory, steps=4):
    config = medmnist_config.get_config(name)
    config.data.dir = str(directory)
    config.data.download = False
    config.model.name = "resnet10"
    config.model.width = 0.125
    trainer = config.trainer
    trainer.num_train_steps, trainer.batch_size, trainer.eval_batch_size = steps, 8, 16
    trainer.log_every_steps = trainer.eval_every_steps = trainer.checkpoint_every_steps = 2
    config.optimizer.warmup_steps = 1
    # The explanations the run writes at its end, on 2 examples with short paths: the defaults'
    # 4 x (32 SmoothGrad samples + 64 integrated-gradient steps) took half the 3D run.
    config.explain.update(num_examples=2, smoothgrad_samples=2, ig_steps=4)
    return config


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dermamnist", "chestmnist", "nodulemnist3d"])
def test_trains_end_to_end(tmp_path, name):
    write_npz(tmp_path, name)
    workdir = tmp_path / "run"
    config = tiny_medmnist(name, tmp_path)
    if medmnist.INFO[name].is_3d:  # explanations of volumes: test_explain.py (half the run)
        config.explain.num_examples = 0
    test_metrics = train.train_and_evaluate(config, str(workdir))
    assert 0.0 <= test_metrics["auroc"] <= 1.0 and 0.0 <= test_metrics["accuracy"] <= 1.0
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    for metric in ("auroc", "accuracy"):  # 95% bootstrap intervals hold the estimate
        assert rows[-1][f"{metric}_low"] <= test_metrics[metric] <= rows[-1][f"{metric}_high"]
    header = open(workdir / "predictions" / "test.csv").readline().strip().split(",")
    if name == "chestmnist":
        assert header[1:15] == [f"label_{c}" for c in range(14)] and len(header) == 29
    else:
        classes = len(medmnist.INFO[name].class_names)
        assert header == ["id", "label", "prediction", *(f"prob_{c}" for c in range(classes))]
        assert (workdir / "plots" / "confusion_matrix.png").exists()


def test_multilabel_selection_metrics_are_ones_it_computes(tmp_path):
    from medjax.tasks import build_task

    write_npz(tmp_path, "chestmnist")
    task = build_task(tiny_medmnist("chestmnist", tmp_path))
    rng = np.random.default_rng(0)
    gathered = {"label": rng.integers(0, 2, (30, 14)), "probs": rng.random((30, 14))}
    assert set(task.selection_metrics) <= set(task.compute_metrics(gathered))
