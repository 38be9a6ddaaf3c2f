"""The experiment binaries (absl flags, ml_collections configs) and their
shipped configs.

Installed as console scripts ``pxp-train``, ``pxp-prune``, ``pxp-search``,
``pxp-iterative``, ``pxp-evaluate`` and ``pxp-convert``; from a clone,
``python -m experiments.NAME`` runs the same binary (``experiments`` links
here). ``--config`` takes a shipped config's name or a config file, each
with an optional argument: ``--config=prune:model=vit_digits,runlocal`` or
``--config=experiments/configs/prune.py:model=vit_digits,runlocal``.
"""
