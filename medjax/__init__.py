"""medjax: JAX/Flax models, training and honest evaluation for medical images and ICU series.

Importing medjax changes no process state; the entry points configure what they need
(medjax.xla_cpu, TensorFlow's devices) explicitly.
"""
