"""mechanisms/ is pure math: importing it loads neither torch nor grpc nor the service, and its
source imports nothing but the standard library, numpy and dp-accounting."""

import ast
import subprocess
import sys
from pathlib import Path

MECHANISMS = Path(__file__).resolve().parents[2] / "mechanisms"
ALLOWED = {"numpy", "dp_accounting"} | set(sys.stdlib_module_names)


def test_import_loads_no_heavy_or_service_module():
    code = (
        "import sys, mechanisms\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'grpc', 'transformers', 'vllm', 'service'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing mechanisms loaded: {out}"


def test_sources_import_only_numpy_dp_accounting_and_stdlib():
    offenders = []
    for path in MECHANISMS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] not in ALLOWED]
    assert offenders == []
