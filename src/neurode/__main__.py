"""``python -m neurode``: the application command (:mod:`neurode.app.cli`)."""

import sys


def _main() -> int:
    try:
        from .app.cli import main
    except ImportError as e:
        print(f"neurode: {e}", file=sys.stderr)
        return 2
    return main()


sys.exit(_main())
