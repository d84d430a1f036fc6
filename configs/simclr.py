"""SimCLR pretraining of a MedMNIST config's ResNet on its training images, without labels.

  python -m medjax.main --config=configs/simclr.py:breastmnist --workdir=runs/breast_simclr \
      --config.data.dir=DIR
  python -m medjax.main --config=configs/medmnist.py:breastmnist --workdir=runs/breast_ft \
      --config.data.dir=DIR --config.init.from_workdir=runs/breast_simclr

The model and data are configs/medmnist.py's for the same name, so every backbone tensor loads
into the fine-tuning run; the task is `contrastive` (medjax/tasks/contrastive.py), and the
checkpoint kept has the lowest validation contrastive loss. Augmentation is stronger than in
supervised training (the two views must differ), and the batch larger, for more negatives.
BreastMNIST (100 epochs, seed 0) ended at validation pair accuracy 0.90; fine-tuned on all its
labels for 20 epochs its ResNet reached test AUC 0.889 (mean of seeds 0, 1, 2; 0.861 from
scratch), on 2 CPU cores shared with other work, 2026-12-05 (experiments/label_efficiency/README.md,
which measures what it buys).
"""

from configs import medmnist, smoke
from medjax.data import medmnist as medmnist_data

EPOCHS = 100  # over the training images, two views each


def get_config(arg: str = ""):
    name, smoke_run = smoke.split(arg, "configs/simclr.py", takes_argument=True)
    config = medmnist.get_config(name)
    info = medmnist_data.INFO[medmnist_data.parse_name(name)[0]]
    config.task = "contrastive"
    config.model.projection_head = True  # SimCLR's: a hidden ReLU layer before the outputs
    config.trainer.update(ensemble_size=1, selection_metric="loss", selection_mode="min")
    config.trainer.batch_size = 64 if info.is_3d else 128
    steps_per_epoch = -(-info.num_train // config.trainer.get_ref("batch_size"))
    config.trainer.num_train_steps = EPOCHS * steps_per_epoch
    config.trainer.ema_decay = 0.0
    config.evaluation.test_time_flips = False
    config.data.augment.update(
        mixup_alpha=0.0, max_rotation_degrees=20.0, max_shift_fraction=0.2,
        intensity_shift=20.0, intensity_scale=0.3,
    )  # fmt: skip
    config.optimizer.update(learning_rate=1e-3, weight_decay=1e-6)
    return smoke.shrink(config) if smoke_run else config
