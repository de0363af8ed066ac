"""Where does the continuous adjoint fail to train an ODE-ResNet? A sweep on digits.

The sweep lives in :mod:`neurode.app.bench.anode_regime` (``neurode
reproduce`` reports it, reading the JSON this script writes); this script runs
it and writes ``benchmarks/results/anode_regime.json`` and
``docs/img/anode_regime.png``.

    python benchmarks/anode_regime.py            # full sweep (~10 min on 2 cores)
    python benchmarks/anode_regime.py --quick    # seconds: tiny grid and budget (CI / tests)
    python benchmarks/anode_regime.py --replot   # redraw the figure from the JSON

See docs/training.md, "Where the adjoint fails to train".
"""

from __future__ import annotations

import sys

from neurode.app.bench.anode_regime import main

if __name__ == "__main__":
    sys.exit(main())
