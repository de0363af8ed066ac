"""The library is torch + numpy; the application wing (neurode.app) is an extra."""

import subprocess
import sys

APP_ONLY = ("matplotlib", "tqdm", "sklearn", "scipy")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_neurode_loads_no_application_dependency():
    # torch itself imports tqdm (torch.hub) when it is installed, so compare with torch alone.
    out = _run(
        "import sys, torch\n"
        "before = set(sys.modules)\n"
        "import neurode\n"
        "new = set(sys.modules) - before\n"
        f"print(sorted(m for m in new if m.split('.')[0] in {APP_ONLY!r} or m.startswith('neurode.app')))\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_import_neurode_without_the_app_extra():
    out = _run(
        "import sys\n"
        f"for m in {APP_ONLY!r}: sys.modules[m] = None\n"
        "import neurode\n"
        "try:\n"
        "    import neurode.app\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    assert out.returncode == 0, out.stderr
    assert "pip install neurode[app]" in out.stdout


def test_python_m_neurode_forwards_to_the_app_command():
    out = subprocess.run(
        [sys.executable, "-m", "neurode", "--version"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("neurode ")
