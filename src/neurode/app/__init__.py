"""neurode's application wing: the ``neurode`` command, trainers, benchmark harness,
report and demo.

The library (``import neurode``) needs torch and numpy only; this sub-package
also needs the ``app`` extra (tqdm, matplotlib, scikit-learn)::

    pip install neurode[app]

- :mod:`neurode.app.cli` — the ``neurode`` command (``python -m neurode``)
- :mod:`neurode.app.train` — trainers: classifier, CNF, latent ODE
- :mod:`neurode.app.bench` — benchmark problems, timing, memory runner, peers, report
- :mod:`neurode.app.data` — CIFAR (local archive), digits, toy densities, spirals
- :mod:`neurode.app.demo`, :mod:`neurode.app.showcase`, :mod:`neurode.app.reproduce`
"""

from __future__ import annotations

import importlib.util

# Import name -> distribution name, for the message.
_REQUIRED = {"tqdm": "tqdm", "matplotlib": "matplotlib", "sklearn": "scikit-learn"}

_missing = [dist for mod, dist in _REQUIRED.items() if importlib.util.find_spec(mod) is None]
if _missing:
    raise ImportError(
        f"neurode.app needs {', '.join(_missing)}, which the library alone does not install: "
        "pip install neurode[app]"
    )
