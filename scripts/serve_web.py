"""One command to serve the browser peer: installs the page's npm packages from the lockfile, exports the
model's graphs for it once, then runs the relay with the page on the same port.

    python scripts/serve_web.py [--model default] [--graphs web/models] [server.py options …]
    # then open http://127.0.0.1:8765/ (the microphone needs https:// or localhost: docs/WEB.md)

The export runs in a process of its own (it needs torch); the relay it then becomes never imports torch.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from call.web_routes import WEB_ROOT, runtime_installed  # noqa: E402  (torch-free)


def install_packages() -> None:
    if runtime_installed():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is not installed: sudo scripts/install-system-deps.sh")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB_ROOT, check=True)


def export_graphs(model: str, graphs: Path) -> None:
    """Exports unless ``graphs`` already holds a bundle (delete the folder to export another model)."""
    if (graphs / "manifest.json").is_file():
        return
    print(f"exporting the graphs of model {model!r} into {graphs} (once)…", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "call.web_bundle", "--model", model, "--out", str(graphs)], cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="the model whose graphs to export (default: the bundled one)")
    parser.add_argument("--graphs", type=Path, default=WEB_ROOT / "models", help="where the graphs go (default %(default)s)")
    args, server_options = parser.parse_known_args()
    try:
        install_packages()
        export_graphs(args.model, args.graphs)
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"{error.cmd[0]} failed with status {error.returncode}") from None
    os.execv(sys.executable, [sys.executable, str(ROOT / "server.py"), "--web", str(args.graphs), *server_options])


if __name__ == "__main__":
    main()
