"""MedMNIST as a TFDS dataset: a builder over `medmnist.read` of the file in the manual dir.

For users of TFDS pipelines; the trainer reads the `.npz` with `medmnist.read` directly (the
arrays are small, and a second copy of them as TFRecords buys nothing). The builder does not
download: TFDS's download manager checks a download against a registered SHA-256, and the
official record publishes MD5s (`medmnist.INFO`), which `medmnist.read` checks when it downloads.
"""

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from medjax.data import medmnist


def _names():
    for base, info in medmnist.INFO.items():
        for size in info.md5:
            yield base if size == 28 else f"{base}_{size}"


class MedMNIST(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One builder config per MedMNIST file (`breastmnist`, `pneumoniamnist_64`, ...)."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = pathlib.Path(__file__)  # see physionet2012_tfds.Physionet2012.code_path
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in _names()]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    This builder does not download. Put the official MedMNIST file `<name>.npz` (e.g.
    `breastmnist.npz`, `pneumoniamnist_64.npz`), from {medmnist.URL.format(file="<name>.npz")},
    in the manual dir. To fetch it with its MD5 checked, run
    `python -c "from medjax.data import medmnist; medmnist.read('DIR', '<name>')"`, which
    downloads it into DIR, and use DIR as the manual dir.
    """

    def _info(self):
        base, size = medmnist.parse_name(self.builder_config.name)
        info = medmnist.INFO[base]
        spatial = (size,) * (3 if info.is_3d else 2)
        shape = (*spatial, info.channels)
        if info.multilabel:
            label = tfds.features.Tensor(shape=(len(info.class_names),), dtype=np.int32)
        else:
            label = tfds.features.ClassLabel(names=list(info.class_names))
        return self.dataset_info_from_configs(
            description=f"MedMNIST v2 {self.builder_config.name}: {info.task}.",
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Tensor(shape=shape, dtype=np.uint8), "label": label}
            ),
            supervised_keys=("image", "label"),
            homepage=medmnist.HOMEPAGE,
            citation="Yang et al., MedMNIST v2 - A large-scale lightweight benchmark for 2D and "
            "3D biomedical image classification. Scientific Data 10, 41 (2023).",
        )

    def _split_generators(self, dl_manager):
        name = self.builder_config.name
        splits = medmnist.read(str(dl_manager.manual_dir), name, download=False)
        return {split: self._generate_examples(arrays) for split, arrays in splits.items()}

    def _generate_examples(self, arrays):
        images = arrays["images"]
        if images.ndim == len(self.info.features["image"].shape):  # gray: add the channel
            images = images[..., None]
        for i, (image, label) in enumerate(zip(images, arrays["labels"])):
            yield i, {"image": image, "label": label}
