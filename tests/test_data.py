import numpy as np
import pytest
import tensorflow as tf

from medjax.data import (
    DATASETS,
    build_dataset,
    image_dataset,
    medmnist,
    pipeline,
    series_dataset,
    synthetic_ct,
    transforms,
)
from medjax.data.dataset import SPLITS, ImageDataset, SeriesDataset
from medjax.errors import ConfigError
from medjax.settings import defaults


class TestDatasetsByName:
    def test_one_mapping_holds_every_dataset(self):
        names = {"synthetic_ct", "ct_folder", "synthetic_ehr", "physionet2012", *medmnist.NAMES}
        assert set(DATASETS) == names
        assert {"breastmnist", "pneumoniamnist_64", "nodulemnist3d_64"} <= names

    def test_an_unknown_name_is_refused_listing_the_valid_ones(self):
        config = defaults.get_config().data
        config.name = "nosuch"
        with pytest.raises(ConfigError) as raised:
            build_dataset(config)
        assert str(raised.value) == (
            f"unknown dataset data.name='nosuch'; valid names: {', '.join(DATASETS)}"
        )

    def test_images_and_series_have_one_shape_and_each_task_refuses_the_other(self):
        config = defaults.get_config().data
        config.update(num_train=6, num_val=4, num_test=4, image_shape=(16, 16), hours=4.0)
        images = image_dataset(config)
        with pytest.raises(ConfigError, match="'synthetic_ct' is a dataset of images; the ehr"):
            series_dataset(config)
        config.name = "synthetic_ehr"
        series = series_dataset(config)
        with pytest.raises(ConfigError, match="'synthetic_ehr' is a dataset of ICU stays; this"):
            image_dataset(config)
        assert isinstance(images, ImageDataset) and isinstance(series, SeriesDataset)
        for dataset, sizes in ((images, (6, 4, 4)), (series, (6, 4, 4))):
            for split, size in zip(SPLITS, sizes):
                arrays = dataset.load_split(split)
                assert arrays["labels"].shape == (size,) and arrays["ids"].shape == (size,)
                assert arrays["ids"].dtype.kind == "U"
                assert dataset.load_split(split) is arrays  # cached
            assert len(dataset.class_names) == 2 and dataset.description
        train = series.load_split("train")
        assert train["values"].shape == (6, 4, len(series.variables))
        assert train["descriptors"].shape == (6, len(series.descriptors))


class TestSyntheticCT:
    def test_deterministic_and_splits_disjoint(self):
        kwargs = dict(image_shape=(32, 32), seed=3, positive_fraction=0.5)
        a = synthetic_ct.generate(20, split="train", **kwargs)
        b = synthetic_ct.generate(20, split="train", **kwargs)
        test = synthetic_ct.generate(20, split="test", **kwargs)
        np.testing.assert_array_equal(a["images"], b["images"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
        assert not set(a["ids"]) & set(test["ids"])
        flat_train = {img.tobytes() for img in a["images"]}
        assert not any(img.tobytes() in flat_train for img in test["images"])

    @pytest.mark.parametrize("shape", [(32, 32), (16, 24, 24)])
    def test_shapes_and_hounsfield_range(self, shape):
        data = synthetic_ct.generate(
            30, image_shape=shape, seed=0, split="val", positive_fraction=0.3
        )
        assert data["images"].shape == (30, *shape) and data["images"].dtype == np.int16
        assert data["labels"].dtype == np.int32 and set(np.unique(data["labels"])) <= {0, 1}
        images = data["images"]
        assert images.min() >= -1024 and images.max() <= 3071
        # Air around the body, lungs near -850 HU, soft tissue near 40 HU are all present.
        assert (images < -950).mean() > 0.1
        assert ((images > -900) & (images < -800)).mean() > 0.05
        assert ((images > 0) & (images < 100)).mean() > 0.1

    def test_positive_fraction(self):
        labels = synthetic_ct.generate(
            400, image_shape=(16, 16), seed=1, split="train", positive_fraction=0.3
        )["labels"]
        assert abs(labels.mean() - 0.3) < 0.07

    def test_suspicious_nodules_are_larger_soft_tissue(self):
        # Label 1 adds at least ~3x3 voxels of soft tissue inside the lungs; compare the counts
        # of soft-tissue voxels (-300..200 HU) between the classes.
        data = synthetic_ct.generate(
            200, image_shape=(64, 64), seed=0, split="train", positive_fraction=0.5
        )
        tissue = ((data["images"] > -300) & (data["images"] < 200)).sum((1, 2))
        positive, negative = tissue[data["labels"] == 1], tissue[data["labels"] == 0]
        assert positive.mean() > negative.mean()

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="unknown split 'dev'"):
            synthetic_ct.generate(
                1, image_shape=(32, 32), seed=0, split="dev", positive_fraction=0.5
            )
        with pytest.raises(ValueError, match="must be"):
            synthetic_ct.generate(
                1, image_shape=(8, 8), seed=0, split="train", positive_fraction=0.5
            )


class TestTransforms:
    def test_window_closed_form(self):
        hu = tf.constant([-2000.0, -1350.0, -600.0, 150.0, 1000.0])
        out = transforms.window(hu, center=-600.0, width=1500.0).numpy()
        np.testing.assert_allclose(out, [-1, -1, 0, 1, 1], atol=1e-6)

    def test_augment_deterministic_in_seed_and_identity_when_off(self):
        hu = tf.constant(np.random.default_rng(0).normal(-500, 300, (2, 16, 16, 1)), tf.float32)
        on = dict(
            flip_left_right=True,
            max_rotation_degrees=20.0,
            max_shift_fraction=0.2,
            intensity_shift=10.0,
            intensity_scale=0.1,
            background=-1000.0,
        )
        seed = tf.constant([1, 2], tf.int64)
        a = transforms.augment(hu, seed, **on).numpy()
        b = transforms.augment(hu, seed, **on).numpy()
        c = transforms.augment(hu, tf.constant([1, 3], tf.int64), **on).numpy()
        np.testing.assert_array_equal(a, b)
        assert a.shape == hu.shape and not np.allclose(a, c)
        off = {**on, "flip_left_right": False, "max_rotation_degrees": 0.0}
        off |= {"max_shift_fraction": 0.0, "intensity_shift": 0.0, "intensity_scale": 0.0}
        np.testing.assert_allclose(transforms.augment(hu, seed, **off).numpy(), hu.numpy())

    def test_flip_reverses_width_not_channels(self):
        rgb = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
        options = dict(max_rotation_degrees=0.0, max_shift_fraction=0.0, intensity_shift=0.0)
        options |= dict(intensity_scale=0.0, background=0.0)
        seeds = [tf.constant([0, s], tf.int64) for s in range(8)]
        outs = [transforms.augment(rgb, s, flip_left_right=True, **options).numpy() for s in seeds]
        flipped = [o for o in outs if not np.array_equal(o, rgb)]
        assert flipped and len(flipped) < len(outs)  # a coin per seed
        np.testing.assert_array_equal(flipped[0], rgb[:, ::-1, :])

    def test_shift_moves_content_and_fills_background(self):
        volume = np.zeros((10, 10, 10, 1), np.float32)
        volume[5, 5, 5] = 1.0
        options = dict(flip_left_right=False, max_rotation_degrees=0.0, intensity_shift=0.0)
        options |= dict(intensity_scale=0.0, background=-7.0, max_shift_fraction=0.3)
        offsets = set()
        for s in range(10):
            out = transforms.augment(volume, tf.constant([2, s], tf.int64), **options).numpy()
            assert out.shape == volume.shape and out.max() == 1.0  # within +-3 of the center
            offsets.add(tuple(np.argwhere(out[..., 0] == 1.0)[0] - 5))
            assert set(np.unique(out)) <= {-7.0, 0.0, 1.0}
        assert len(offsets) > 1 and all(max(map(abs, o)) <= 3 for o in offsets)
        assert any(o[0] != 0 for o in offsets)  # depth moves too (a 3D crop)

    def test_scale_uint8(self):
        out = transforms.scale_uint8(tf.constant([0, 255], tf.uint8)).numpy()
        np.testing.assert_allclose(out, [-1.0, 1.0])

    def test_rotation_turns_about_the_center(self):
        image = np.full((9, 9, 1), -1000.0, np.float32)
        image[4, 6] = 500.0  # two voxels right of the center
        angle = tf.constant(np.pi / 2, tf.float32)
        rotated = transforms._rotate_planes(tf.constant(image), angle, -1000.0).numpy()[..., 0]
        assert rotated[4, 4] == -1000.0
        peak = np.unravel_index(rotated.argmax(), rotated.shape)
        assert peak in {(2, 4), (6, 4)}  # a quarter turn moves it onto the vertical axis
        np.testing.assert_allclose(rotated.max(), 500.0, atol=1e-3)


def _load(images):
    images = tf.constant(images)

    def load(index, seed):
        return {"image": tf.gather(images, index), "seed": seed}

    return load


class TestTrainBatches:
    labels = np.array([0, 1] * 10 + [0] * 12)  # 32 examples, 10 positive

    def batches(self, start_step, n, **kwargs):
        kwargs = (
            dict(global_batch_size=8, seed=5, balanced=False, process_index=0, process_count=1)
            | kwargs
        )
        it = pipeline.train_batches(
            self.labels, _load(np.arange(32.0)), start_step=start_step, **kwargs
        )
        return [next(it) for _ in range(n)]

    def test_resume_sees_the_same_batches(self):
        straight = self.batches(0, 10)
        resumed = self.batches(6, 4)
        for a, b in zip(straight[6:], resumed):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["seed"], b["seed"])

    def test_each_epoch_is_a_permutation_and_epochs_differ(self):
        batches = self.batches(0, 8)  # 4 steps per epoch
        first = np.concatenate([b["image"] for b in batches[:4]])
        second = np.concatenate([b["image"] for b in batches[4:]])
        np.testing.assert_array_equal(np.sort(first), np.arange(32.0))
        np.testing.assert_array_equal(np.sort(second), np.arange(32.0))
        assert not np.array_equal(first, second)

    def test_processes_split_each_global_batch(self):
        whole = self.batches(0, 3)
        parts = [self.batches(0, 3, process_index=p, process_count=2) for p in range(2)]
        for step in range(3):
            joined = np.concatenate([parts[p][step]["image"] for p in range(2)])
            np.testing.assert_array_equal(joined, whole[step]["image"])
            seeds = np.concatenate([parts[p][step]["seed"] for p in range(2)])
            np.testing.assert_array_equal(seeds, whole[step]["seed"])
        assert len({tuple(s) for b in whole for s in b["seed"]}) == 24  # unique per example

    def test_balanced_order_has_equal_classes(self):
        order = pipeline.epoch_order(self.labels, seed=0, epoch=0, balanced=True)
        counts = np.bincount(self.labels[order])
        assert counts[0] == counts[1] == 22
        positives = np.flatnonzero(self.labels == 1)
        times_each = np.bincount(order, minlength=32)[positives]
        assert times_each.min() >= 2 and times_each.max() <= 3  # cycled, not sampled blindly

    def test_too_few_examples(self):
        with pytest.raises(ValueError, match="fewer examples than one global batch"):
            self.batches(0, 1, global_batch_size=64)


def test_eval_batches_visit_every_example_once():
    def load(index):
        return {"x": tf.cast(index, tf.float32) * 10}

    seen = []
    for p in range(2):
        for batch in pipeline.eval_batches(
            21, load, global_batch_size=8, process_index=p, process_count=2
        ):
            assert batch["x"].shape == (4,)
            seen.extend(batch["index"][batch["valid"]])
            np.testing.assert_array_equal(
                batch["x"][batch["valid"]], batch["index"][batch["valid"]] * 10
            )
    assert sorted(seen) == list(range(21))
