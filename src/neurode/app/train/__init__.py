"""Training: the ``neurode train`` command and the helpers it shares.

- :mod:`neurode.app.train.common` — atomic checkpoints, RNG state capture/restore,
  seeding, device resolution, the JSONL metrics logger, peak memory, plots.
- :mod:`neurode.app.train.classify` — the image-classifier training loop
  (ODE-ResNet / SqueezeNext-ODE on digits, CIFAR-10, CIFAR-100).
- :mod:`neurode.app.train.distributed` — DistributedDataParallel set-up for
  ``torchrun``.
- :mod:`neurode.app.train.cli` — argument parsing and dispatch
  (``neurode train``, ``neurode train cnf``, ``neurode train latent``).

Submodules are imported on use so ``import neurode`` stays light.
"""
