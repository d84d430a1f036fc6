"""Losses as pure functions of arrays: classification (scalars) and VAE terms (per example).

Both losses reduce alike. With per-example loss ``l_i``, example weight ``w_i`` (1 without class
weights) and mask ``m_i`` in {0, 1} (1 without a mask)::

    loss = sum_i m_i * w_i * l_i / max(sum_i m_i, 1)

that is, the mean over unmasked examples. Class weights scale the loss and are not renormalised:
all-ones weights change nothing, and integer weights give the unweighted loss of a dataset in
which example i appears w_i times, times ``sum_i m_i w_i / sum_i m_i``. A fully masked batch gives
0 (with zero gradient).

Options are Python values read at trace time: under ``jax.jit`` close over them (or mark them
static). Shape checks read static shapes and raise ``ValueError`` before anything reaches XLA.
Half-precision logits are computed in float32. Everything is computed from log-softmax /
log-sigmoid, so logits of +-1e4 give finite losses and gradients.
"""

import jax
import jax.numpy as jnp
import optax


def softmax_cross_entropy(
    logits, labels, *, mask=None, class_weights=None, label_smoothing=0.0, focal_gamma=0.0
):
    """Softmax cross-entropy (or focal loss) for single-label classification, as a scalar.

    Args:
      logits: [B, C] float, C >= 2.
      labels: [B] integer class ids (any int dtype) or [B, C] one-hot / probability rows. Ids
        outside [0, C) cannot be checked under jit: they give an all-zero row (zero loss).
      mask: optional [B] of {0, 1} (bool or numeric); 0 drops the example.
      class_weights: optional [C]; example i is weighted by sum_c y_ic w_c (w_{y_i} for ids),
        using the labels before smoothing.
      label_smoothing: eps in [0, 1); targets become y (1 - eps) + eps / C.
      focal_gamma: gamma >= 0; the per-example loss becomes sum_c y_c (1 - p_c)^gamma (-log p_c)
        (Lin et al. 2017, without alpha). 0 is plain cross-entropy. Costs O(B C^2) memory.

    Returns:
      The weighted mean over unmasked examples (see the module docstring).
    """
    logits = _as_float(logits)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(
            f"softmax_cross_entropy: logits have shape {logits.shape}, expected [B, C] with C >= 2."
            " For binary or multi-label outputs use sigmoid_cross_entropy."
        )
    batch, num_classes = logits.shape
    labels = jnp.asarray(labels)
    _check_batch("softmax_cross_entropy", logits.shape, labels.shape)
    if labels.shape == (batch,):
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(
                f"softmax_cross_entropy: labels of shape [B] = {labels.shape} must be integer class"
                f" ids, got dtype {labels.dtype}; cast them with .astype(int) or pass one-hot /"
                f" probability rows of shape [B, C] = {logits.shape}."
            )
        labels = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    elif labels.shape == logits.shape:
        labels = labels.astype(logits.dtype)
    else:
        raise ValueError(
            f"softmax_cross_entropy: labels have shape {labels.shape}, expected [B] = ({batch},)"
            f" integer class ids or [B, C] = {logits.shape} one-hot / probability rows."
        )
    _check_options(
        "softmax_cross_entropy",
        batch,
        num_classes,
        mask,
        class_weights,
        label_smoothing,
        focal_gamma,
    )

    targets = optax.smooth_labels(labels, label_smoothing) if label_smoothing else labels
    if focal_gamma == 0:
        per_example = optax.softmax_cross_entropy(logits, targets)
    else:
        # log(1 - p_c) as the log-sum-exp over the other classes: exact even where p_c rounds to 1.
        others = ~jnp.eye(num_classes, dtype=bool)
        log_not_p = jax.nn.logsumexp(logits[:, None, :], axis=-1, where=others)
        log_not_p -= jax.nn.logsumexp(logits, axis=-1, keepdims=True)
        modulator = jnp.exp(focal_gamma * log_not_p)
        per_example = -jnp.sum(targets * modulator * jax.nn.log_softmax(logits), axis=-1)
    weights = None
    if class_weights is not None:
        weights = jnp.sum(labels * jnp.asarray(class_weights, logits.dtype), axis=-1)
    return _masked_mean(per_example, weights, mask)


def sigmoid_cross_entropy(
    logits, labels, *, mask=None, class_weights=None, label_smoothing=0.0, focal_gamma=0.0
):
    """Sigmoid cross-entropy (or focal loss) for binary and multi-label outputs, as a scalar.

    Each output is an independent binary prediction. An example's loss is the mean over its C
    outputs; examples are then reduced as in the module docstring.

    Args:
      logits: [B, C] (multi-label) or [B] (binary, treated as C = 1).
      labels: the shape of logits, in {0, 1} or soft in [0, 1]; any dtype.
      mask: optional [B] of {0, 1} (bool or numeric); 0 drops the example.
      class_weights: optional [C] ([1] for [B] logits); w_c multiplies the positive term of
        output c, like a pos_weight: -(w_c y log p + (1 - y) log(1 - p)).
      label_smoothing: eps in [0, 1); targets become y (1 - eps) + eps / 2.
      focal_gamma: gamma >= 0; per output -(w y (1 - p)^gamma log p + (1 - y) p^gamma log(1 - p)),
        which for hard labels is (1 - p_t)^gamma BCE (Lin et al. 2017, without alpha). For soft
        labels this differs from optax.sigmoid_focal_loss (one factor with a mixed p_t).

    Returns:
      The weighted mean over unmasked examples (see the module docstring).
    """
    logits = _as_float(logits)
    labels = jnp.asarray(labels)
    if logits.ndim not in (1, 2):
        raise ValueError(
            f"sigmoid_cross_entropy: logits have shape {logits.shape}, expected [B] (binary) or"
            " [B, C] (multi-label)."
        )
    _check_batch("sigmoid_cross_entropy", logits.shape, labels.shape)
    if labels.shape != logits.shape:
        hint = ""
        if jnp.issubdtype(labels.dtype, jnp.integer) and logits.ndim == 2:
            hint = (
                " Integer labels must be a 0/1 indicator per output, not class ids; convert ids"
                " with jax.nn.one_hot, or use softmax_cross_entropy for single-label classes."
            )
        raise ValueError(
            f"sigmoid_cross_entropy: labels have shape {labels.shape}, expected the logits shape"
            f" {logits.shape}.{hint}"
        )
    batch = logits.shape[0]
    num_outputs = logits.shape[1] if logits.ndim == 2 else 1
    _check_options(
        "sigmoid_cross_entropy",
        batch,
        num_outputs,
        mask,
        class_weights,
        label_smoothing,
        focal_gamma,
    )

    logits = logits.reshape(batch, num_outputs)
    targets = labels.astype(logits.dtype).reshape(batch, num_outputs)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / 2.0
    log_p, log_not_p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
    pos_term, neg_term = -log_p, -log_not_p
    if focal_gamma != 0:
        pos_term *= jnp.exp(focal_gamma * log_not_p)
        neg_term *= jnp.exp(focal_gamma * log_p)
    if class_weights is not None:
        pos_term *= jnp.asarray(class_weights, logits.dtype)
    per_output = targets * pos_term + (1.0 - targets) * neg_term
    return _masked_mean(jnp.mean(per_output, axis=-1), None, mask)


def _as_float(logits):
    logits = jnp.asarray(logits)
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def _check_batch(name, logits_shape, labels_shape):
    if not labels_shape or labels_shape[0] != logits_shape[0]:
        raise ValueError(
            f"{name}: labels have shape {labels_shape} but logits {logits_shape}; both need the"
            " same batch size B on axis 0."
        )


def _check_options(name, batch, num_classes, mask, class_weights, label_smoothing, focal_gamma):
    if mask is not None and jnp.shape(mask) != (batch,):
        raise ValueError(
            f"{name}: mask has shape {jnp.shape(mask)}, expected [B] = ({batch},), one 0/1 entry"
            " per example; reshape it or pass mask=None."
        )
    if class_weights is not None and jnp.shape(class_weights) != (num_classes,):
        raise ValueError(
            f"{name}: class_weights has shape {jnp.shape(class_weights)}, expected [C] ="
            f" ({num_classes},), one weight per class; pass that many weights or None."
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"{name}: label_smoothing={label_smoothing}, expected a value in [0, 1).")
    if focal_gamma < 0:
        raise ValueError(f"{name}: focal_gamma={focal_gamma}, expected a value >= 0 (0: no focal).")


def _masked_mean(per_example, weights, mask):
    """sum_i m_i w_i l_i / max(sum_i m_i, 1); see the module docstring."""
    if weights is not None:
        per_example = weights * per_example
    if mask is None:
        return jnp.mean(per_example)
    mask = jnp.asarray(mask).astype(bool)
    total = jnp.sum(jnp.where(mask, per_example, 0.0))
    return total / jnp.maximum(jnp.sum(mask, dtype=per_example.dtype), 1.0)


# Variational autoencoders: per-example terms [B] (log-likelihoods summed over all non-batch
# axes), in float32 at least, for the trainer to average; Kingma & Welling (2014), Burda et al.
# (2016). For K samples with a leading axis, map over it: jax.vmap(fn, in_axes=(0, None)).

_LOG_2PI = 1.8378770664093453  # log(2 pi)


def gaussian_kl(mean, log_var):
    """KL(N(mean, diag(exp(log_var))) || N(0, I)), analytic, summed over the last axis.

    Args:
      mean, log_var: [B, L] (any leading axes [..., L]), the same shape.

    Returns:
      [B]: 0.5 * sum_l (exp(log_var) - 1 - log_var + mean^2), >= 0; exactly 0 at (0, 0).
    """
    mean, log_var = _as_float(mean), _as_float(log_var)
    _check_same("gaussian_kl", mean=mean, log_var=log_var)
    return 0.5 * jnp.sum(jnp.expm1(log_var) - log_var + jnp.square(mean), axis=-1)


def bernoulli_log_likelihood(logits, x):
    """log p(x | logits) of independent Bernoullis, summed over all non-batch axes.

    Equals minus the binary cross-entropy with logits; for x in (0, 1) the same formula is used
    (it is then not a normalised density: the continuous Bernoulli adds a term in the logits).
    Computed from log-sigmoid, so logits of +-100 (and beyond) stay finite.

    Args:
      logits: [B, ...] float.
      x: the logits' shape, values in [0, 1].

    Returns:
      [B]: sum x log sigmoid(logits) + (1 - x) log sigmoid(-logits).
    """
    logits = _as_float(logits)
    x = jnp.asarray(x).astype(logits.dtype)
    _check_same("bernoulli_log_likelihood", logits=logits, x=x)
    per_pixel = x * jax.nn.log_sigmoid(logits) + (1.0 - x) * jax.nn.log_sigmoid(-logits)
    return _sum_non_batch(per_pixel)


def gaussian_log_likelihood(x, mean, log_std):
    """log N(x; mean, exp(log_std)^2) per pixel, summed over all non-batch axes.

    Args:
      x: [B, ...] float.
      mean: the shape of x.
      log_std: broadcastable to x's shape (a scalar, [B, 1, ...], or per pixel).

    Returns:
      [B]: sum -0.5 ((x - mean) / std)^2 - log_std - 0.5 log(2 pi).
    """
    x = _as_float(x)
    mean = jnp.asarray(mean).astype(x.dtype)
    log_std = jnp.asarray(log_std).astype(x.dtype)
    _check_same("gaussian_log_likelihood", x=x, mean=mean)
    if _broadcast_shape(log_std.shape, x.shape) != x.shape:
        raise ValueError(
            f"gaussian_log_likelihood: log_std has shape {log_std.shape}, which does not"
            f" broadcast to x's shape {x.shape}; pass a scalar or a shape with 1 on other axes."
        )
    scaled = (x - mean) * jnp.exp(-log_std)
    per_pixel = -0.5 * jnp.square(scaled) - log_std - 0.5 * _LOG_2PI
    return _sum_non_batch(jnp.broadcast_to(per_pixel, x.shape))


def gaussian_log_density(z, mean, log_var):
    """log N(z; mean, diag(exp(log_var))), summed over the last axis.

    For the importance-weighted bound: log q(z | x) with the encoder's (mean, log_var), and log
    p(z) with (0, 0).

    Args:
      z: [..., L], e.g. [K, B, L].
      mean, log_var: broadcastable against z (e.g. [B, L] against [K, B, L], or scalars).

    Returns:
      [...]: the broadcast shape without its last axis.
    """
    z = _as_float(z)
    mean, log_var = jnp.asarray(mean).astype(z.dtype), jnp.asarray(log_var).astype(z.dtype)
    shape = _broadcast_shape(z.shape, mean.shape, log_var.shape)
    if shape is None or len(shape) < 1:
        raise ValueError(
            f"gaussian_log_density: z {z.shape}, mean {mean.shape} and log_var {log_var.shape}"
            " must broadcast together to a shape [..., L] with at least one axis."
        )
    per_dim = -0.5 * (_LOG_2PI + log_var + jnp.square(z - mean) * jnp.exp(-log_var))
    return jnp.sum(jnp.broadcast_to(per_dim, shape), axis=-1)


def gaussian_mixture_log_density(z, logits, means, log_vars):
    """log sum_m softmax(logits)_m N(z; means_m, diag(exp(log_vars_m))): a learned VAE prior.

    Args:
      z: [..., L], e.g. [K, B, L].
      logits: [M], the unnormalised log weights of the M components.
      means, log_vars: [M, L].

    Returns:
      [...]: z's shape without its last axis.
    """
    z = _as_float(z)
    logits, means, log_vars = (jnp.asarray(a).astype(z.dtype) for a in (logits, means, log_vars))
    _check_same("gaussian_mixture_log_density", means=means, log_vars=log_vars)
    if means.ndim != 2 or logits.shape != means.shape[:1] or z.shape[-1:] != means.shape[1:]:
        raise ValueError(
            f"gaussian_mixture_log_density: z {z.shape}, logits {logits.shape} and means"
            f" {means.shape} must be [..., L], [M] and [M, L]."
        )
    per_component = gaussian_log_density(z[..., None, :], means, log_vars)  # [..., M]
    return jax.nn.logsumexp(per_component + jax.nn.log_softmax(logits), axis=-1)


def negative_elbo(log_likelihood, kl, beta=1.0):
    """Per-example negative ELBO -(log p(x | z) - beta KL), in nats.

    Args:
      log_likelihood: [B], a (single-sample) estimate of E_q log p(x | z).
      kl: [B], KL(q(z | x) || p(z)) (e.g. `gaussian_kl`).
      beta: weight on the KL term (beta-VAE, Higgins et al. 2017); 1 gives the ELBO.

    Returns:
      [B].
    """
    log_likelihood, kl = _as_float(log_likelihood), _as_float(kl)
    _check_same("negative_elbo", log_likelihood=log_likelihood, kl=kl)
    return beta * kl - log_likelihood


def importance_weighted_bound(log_px_z, log_pz, log_qz):
    """The K-sample importance-weighted bound on log p(x) (Burda et al., 2016).

    log (1/K) sum_k exp(log p(x | z_k) + log p(z_k) - log q(z_k | x)), z_k ~ q(z | x), computed
    as a log-sum-exp minus log K. K = 1 gives the single-sample ELBO; the bound's expectation
    rises with K towards log p(x).

    Args:
      log_px_z, log_pz, log_qz: [K, B] each.

    Returns:
      [B].
    """
    log_px_z, log_pz, log_qz = _as_float(log_px_z), _as_float(log_pz), _as_float(log_qz)
    _check_same("importance_weighted_bound", log_px_z=log_px_z, log_pz=log_pz, log_qz=log_qz)
    if log_px_z.ndim != 2:
        raise ValueError(
            f"importance_weighted_bound: inputs have shape {log_px_z.shape}, expected [K, B]"
            " (samples first); add a sample axis with x[None] for K = 1."
        )
    log_w = log_px_z + log_pz - log_qz
    return jax.nn.logsumexp(log_w, axis=0) - jnp.log(jnp.asarray(log_w.shape[0], log_w.dtype))


def _sum_non_batch(per_pixel):
    return jnp.sum(per_pixel.reshape(per_pixel.shape[0], -1), axis=-1)


def _broadcast_shape(*shapes):
    try:
        return tuple(jnp.broadcast_shapes(*shapes))
    except ValueError:
        return None


def _check_same(name, **arrays):
    (first, a), *rest = arrays.items()
    if a.ndim < 1:
        raise ValueError(f"{name}: {first} is a scalar; expected a leading batch axis.")
    for other, b in rest:
        if b.shape != a.shape:
            raise ValueError(
                f"{name}: {other} has shape {b.shape} but {first} {a.shape}; they must match"
                " (map over a sample axis with jax.vmap)."
            )


def nt_xent(embeddings, temperature: float):
    """SimCLR's contrastive loss (NT-Xent; Chen et al., 2020) of each example's two views.

    embeddings [N, 2, D], two views of each of N examples. Each of the 2N views is classified
    among the other 2N - 1 by cosine similarity / temperature, its own example's other view
    being the right answer; returns the cross-entropy per example [N], the mean of its two
    views'.
    """
    n, views, dims = embeddings.shape
    z = embeddings.reshape(n * views, dims).astype(jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    similarity = z @ z.T / temperature
    similarity = jnp.where(jnp.eye(n * views, dtype=bool), -jnp.inf, similarity)
    partner = jnp.arange(n * views) ^ 1  # rows 2i and 2i + 1 are the two views of example i
    positive = similarity[jnp.arange(n * views), partner]
    loss = jax.nn.logsumexp(similarity, axis=-1) - positive
    return loss.reshape(n, views).mean(axis=-1)
