"""PhysioNet 2012 as a TFDS dataset: a builder over `physionet2012.read_set`, and a loader.

For users of TFDS pipelines; the trainer reads the files with `read_set` directly (seconds).
"""

import dataclasses
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from medjax.data.physionet2012 import DESCRIPTORS, SET_NAMES, Record, read_set
from medjax.data.physionet2012_files import URL, read_outcomes
from medjax.errors import ConfigError


class Physionet2012(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder over `read_set`: config `a`, `b` or `c` gives one split of that name."""

    VERSION = tfds.core.Version("1.0.0")
    # TFDS 4.9.10 finds a builder's code_path through the `importlib_resources` backport, which
    # etils >= 1.15 no longer installs (ModuleNotFoundError in download_and_prepare); the path of
    # this file is all TFDS needs it for (to look for a checksums.tsv beside it: there is none).
    code_path = pathlib.Path(__file__)
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=s, description=f"PhysioNet 2012 set {s.upper()}")
        for s in SET_NAMES
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download the PhysioNet/CinC Challenge 2012 files from {URL} (open access, no login):
    set-a.tar.gz and Outcomes-a.txt (likewise set-b/-c and Outcomes-b/-c), and put them, as
    downloaded, in one folder (the manual dir, `--config.data.dir`). The extracted folder set-a/
    may stand in for set-a.tar.gz.
    """

    def _info(self):
        return self.dataset_info_from_configs(
            description="ICU stays of the first 48 h with in-hospital death; irregular series.",
            features=tfds.features.FeaturesDict(
                {
                    "record_id": np.int64,
                    "times": tfds.features.Tensor(shape=(None,), dtype=np.float32),
                    "variables": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                    "values": tfds.features.Tensor(shape=(None,), dtype=np.float32),
                    "descriptors": tfds.features.Tensor(
                        shape=(len(DESCRIPTORS),), dtype=np.float32
                    ),
                    "label": tfds.features.ClassLabel(names=["survived", "died"]),
                }
            ),
            homepage=URL,
            citation="Silva et al., Predicting In-Hospital Mortality of ICU Patients: The "
            "PhysioNet/Computing in Cardiology Challenge 2012. CinC 2012;39:245-248.",
        )

    def _split_generators(self, dl_manager):
        set_name = self.builder_config.name
        return {set_name: self._generate_examples(str(dl_manager.manual_dir), set_name)}

    def _generate_examples(self, directory, set_name):
        records, labels, _ = read_set(directory, set_name)
        for record, label in zip(records, labels):
            example = dataclasses.asdict(record)
            yield record.record_id, {**example, "label": int(label)}


def load_set_tfds(
    directory: str, set_name: str, data_dir: str | None = None
) -> tuple[list[Record], np.ndarray]:
    """Builds (once; later calls reuse the cache) and reads set `set_name` through TFDS.

    The cache goes to `data_dir`; by default `directory`/tfds when `directory` is writable, else
    ~/tensorflow_datasets. The cache is keyed by set and builder version only: delete it after
    changing the files in `directory`. Returns (records sorted by id, labels int32 [N]).
    """
    if set_name not in SET_NAMES:
        raise ConfigError(f"unknown PhysioNet 2012 set {set_name!r}; valid: {', '.join(SET_NAMES)}")
    read_outcomes(directory, set_name)  # checks the folder up front, with a plain message
    if data_dir is None:
        writable = os.access(directory, os.W_OK)
        data_dir = os.path.join(directory, "tfds") if writable else None  # None: TFDS default
    builder = Physionet2012(config=set_name, data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=directory, try_download_gcs=False)
    )
    examples = sorted(
        tfds.as_numpy(builder.as_dataset(split=set_name)), key=lambda e: int(e["record_id"])
    )
    records = [
        Record(
            int(e["record_id"]),
            e["times"].astype(np.float32),
            e["variables"].astype(np.int32),
            e["values"].astype(np.float32),
            e["descriptors"].astype(np.float32),
        )
        for e in examples
    ]
    return records, np.array([e["label"] for e in examples], np.int32)
