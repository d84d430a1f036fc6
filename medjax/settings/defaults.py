"""Every config key, with its default. Experiment configs override these and add none;
the `model` section holds the keys of the chosen model (medjax.models.settings).

A key added to medjax takes a default that keeps the behaviour from before it: a run written
before the key existed is resumed, ensembled and predicted with as if it had the default.

Not run on its own: see configs/ct_cnn.py.
"""

import ml_collections

from medjax import models


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # every random choice of training derives from it (init, dropout, order)
    config.task = "classification"  # medjax.tasks.TASKS: classification, ehr, vae, contrastive
    config.dtype = "float32"  # compute dtype: float32 or bfloat16 (parameters stay float32)
    config.parallel = "jit"  # jit (sharded global arrays) or pmap (classic, replicated state)

    config.trainer = trainer = ml_collections.ConfigDict()
    trainer.num_train_steps = 1000
    trainer.batch_size = 64  # global, over all devices
    trainer.accumulation_steps = 1  # micro-batches of batch_size / K, one optimiser step
    trainer.eval_batch_size = 256  # global; the last batch is padded and masked
    trainer.log_every_steps = 50
    trainer.eval_every_steps = 200  # validation, best checkpoint, early stopping
    trainer.checkpoint_every_steps = 200  # latest checkpoint
    trainer.max_checkpoints_to_keep = 2  # latest ones; the best is kept apart
    trainer.selection_metric = "auroc"  # validation metric for the best checkpoint
    trainer.selection_mode = "max"  # max or min
    trainer.early_stopping_patience = 0  # evaluations without improvement; 0: never stop early
    trainer.on_nonfinite = "stop"  # a NaN/Inf loss or gradient: stop, or skip the update
    trainer.ema_decay = 0.0  # > 0: evaluate (and keep as best) a moving average of the weights
    # > 1: train this many seeds (seed, seed + 1, ...) in <workdir>/members/seed_<s>, then
    # evaluate the mean of their logits as one model in <workdir> (as --mode=ensemble)
    trainer.ensemble_size = 1

    config.optimizer = opt = ml_collections.ConfigDict()
    opt.name = "adamw"  # adamw or sgd
    opt.learning_rate = 1e-3  # peak, after warm-up
    opt.weight_decay = 1e-4  # not on biases and norm scales
    opt.b1 = 0.9  # adamw
    opt.b2 = 0.999  # adamw
    opt.momentum = 0.9  # sgd
    opt.nesterov = False  # sgd
    opt.schedule = "cosine"  # cosine, linear or constant after warm-up
    opt.warmup_steps = 50
    opt.end_learning_rate_factor = 0.0  # final learning rate / peak
    opt.grad_clip_norm = 1.0  # clip by global norm; 0: no clipping

    # The model: `name` imports medjax.models.<name>; the other keys are its Model's fields
    # (medjax/models/__init__.py), each config setting those of its model with models.settings.
    config.model = models.settings("resnet18", small_input=True)

    # Where training starts: fresh weights, or those of another run or file (medjax/pretrained.py).
    config.init = init = ml_collections.ConfigDict()
    init.from_workdir = ""  # a run whose best checkpoint's matching tensors (name, shape) load
    init.from_file = ""  # a torchvision ResNet state dict, .safetensors or .npz, loaded alike
    # "": train all; "backbone": all but the head (linear probing); or comma-separated glob
    # patterns over parameter paths ("stem_*,stage0_*"): those stay as initialised
    init.freeze = ""

    config.loss = loss = ml_collections.ConfigDict()
    loss.label_smoothing = 0.0
    loss.focal_gamma = 0.0  # 0: cross-entropy
    loss.class_weights = ()  # classification: one per class, or () for none
    loss.positive_weight = 1.0  # ehr: weight of the positive term of the sigmoid loss
    loss.per_step_weight = 0.0  # ehr: weight of an extra loss on every valid step's prediction
    loss.temperature = 0.1  # contrastive: NT-Xent temperature of the cosine similarities
    loss.projection_size = 128  # contrastive: outputs of the model, where NT-Xent compares views
    loss.beta = 1.0  # vae: weight of the KL term
    loss.kl_warmup_steps = 0  # vae: the KL weight rises linearly from 0 over these steps

    config.data = data = ml_collections.ConfigDict()
    data.name = "synthetic_ct"  # medjax.data.DATASETS (ehr: synthetic_ehr, physionet2012)
    data.dir = ""  # folder with the dataset's files as distributed (real datasets)
    data.download = True  # MedMNIST: download the official file into data.dir when absent
    data.seed = 0  # which synthetic cohort / which held-out split; apart from `seed`
    data.num_train = 6000  # synthetic data: patients per split
    data.num_val = 1000
    data.num_test = 2000
    data.balanced_sampling = False  # oversample smaller classes to the largest one
    data.label_fraction = 1.0  # images: train on this share of the training split (by class)
    data.num_folds = 0  # K >= 2: K-fold cross-validation by patient, fold data.fold is test
    data.fold = 0  # with num_folds: the test fold; val is data.val_fraction of the others
    # Images.
    data.image_shape = (64, 64)  # synthetic data: (H, W) slices or (D, H, W) volumes
    data.spacing = (5.0, 5.0, 5.0)  # ct_folder: voxel size (z, y, x), mm, after resampling
    data.ct_geometry = "resample"  # ct_folder: gantry tilt, uneven gaps: resample or refuse
    data.cache_dir = ""  # ct_folder: TFDS cache of the volumes; "": ~/tensorflow_datasets
    data.positive_fraction = 0.3  # synthetic data: share with a suspicious nodule
    data.normal_only = True  # vae: train on label-0 examples only (label 1 = anomaly)
    data.window_center = -600.0  # HU window (lung), mapped to [-1, 1]
    data.window_width = 1500.0
    data.augment = augment = ml_collections.ConfigDict()
    augment.enabled = True
    augment.flip_left_right = True
    augment.max_rotation_degrees = 10.0  # in the axial plane
    augment.max_shift_fraction = 0.0  # shift (3D: crop) along every axis, up to this of a side
    augment.intensity_shift = 10.0  # std of an intensity offset, in the image's units (HU, 0..255)
    augment.intensity_scale = 0.03  # intensity scale jitter, +-fraction
    # classification: > 0 mixes each training image with a random other, weights w and 1 - w,
    # w ~ Beta(alpha, alpha), labels alike (mixup, Zhang et al. 2018); 0: off
    augment.mixup_alpha = 0.0
    # ICU time series.
    data.hours = 48.0  # the first hours of the stay
    data.step_hours = 1.0  # grid step
    data.imputation = "zero"  # zero (= training mean, with mask and delta) or forward_fill
    data.train_sets = "a"  # physionet2012: the sets trained on, comma-separated (a,b): their union
    data.test_set = ""  # physionet2012: "" (a held-out part of train_sets) or a whole set a/b/c
    data.test_fraction = 0.2  # of train_sets (physionet2012, test_set ""); ct_folder: of patients
    data.val_fraction = 0.15  # of train_sets (physionet2012); ct_folder: of patients (no split col)

    # Evaluation of binary tasks: a threshold chosen on val, then applied to the evaluated split.
    config.evaluation = evaluation = ml_collections.ConfigDict()
    evaluation.operating_point = "youden"  # youden (max Se + Sp - 1), sensitivity (a target)
    # or min_se_ppv (max min(Se, PPV)); min_se_ppv is reported at its own val threshold anyway
    evaluation.target_sensitivity = 0.9  # operating_point=sensitivity: val sensitivity >= this
    # classification: average the logits of each image and its left-right mirror (val and test;
    # needs data.augment.flip_left_right)
    evaluation.test_time_flips = False

    # Differentially private training (DP-SGD, medjax/privacy.py): Poisson-sampled batches of
    # trainer.batch_size expected examples, per-example gradients clipped, Gaussian noise added.
    config.privacy = privacy = ml_collections.ConfigDict()
    privacy.enabled = False
    privacy.l2_norm_clip = 1.0  # each example's gradient is clipped to this global L2 norm
    privacy.noise_multiplier = 1.0  # noise std / l2_norm_clip; used when target_epsilon is 0
    privacy.target_epsilon = 0.0  # > 0: noise solved so trainer.num_train_steps spend exactly this
    privacy.delta = 0.0  # 0: 1 / (10 N), N the training examples
    privacy.accountant = "rdp"  # rdp or pld (tighter, slower)
    privacy.microbatch_size = 0  # per-example gradients computed this many at once; 0: all

    # --mode=explain: attributions of the evaluated split's first examples.
    config.explain = explain = ml_collections.ConfigDict()
    explain.num_examples = 4
    explain.smoothgrad_samples = 32  # noisy copies averaged by SmoothGrad
    explain.smoothgrad_noise = 0.15  # their noise std, as a fraction of the input's range
    explain.ig_steps = 64  # integrated gradients: steps of the path from the baseline
    return config
