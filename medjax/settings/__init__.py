"""Every config key with its default (defaults.py) and the valid values of each (rules.py).

Experiment configs (configs/*.py) start from `defaults.get_config()` and override it; medjax
reads the defaults to resume a run written before a key existed.
"""
