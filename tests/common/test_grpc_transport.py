"""Every service chooses gRPC core's transport before grpc is imported (services/__init__.py).

gRPC reads GRPC_EXPERIMENTS once, when grpc is first imported: set any later, it does nothing.
Each check runs a fresh interpreter that imports a service's entry module and records the
variable at the moment grpc itself is first imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import services

ROOT = Path(__file__).resolve().parents[2]

# Records GRPC_EXPERIMENTS when `grpc` is first looked up, then imports the module given.
PROBE = """
import importlib, json, os, sys
seen = []
class Probe:
    def find_spec(self, name, path=None, target=None):
        if name == "grpc" and not seen:
            seen.append(os.environ.get("GRPC_EXPERIMENTS"))
        return None
sys.meta_path.insert(0, Probe())
importlib.import_module(sys.argv[1])
print(json.dumps({"seen": seen, "grpc_loaded": "grpc" in sys.modules}))
"""

# What each service's `python -m services.<name>` runs (its __main__ would start it), and the floors.
ENTRY_MODULES = ["services.gateway.app", "services.scheduler.server", "services.storage.server",
                 "services.runner.server", "bench._floors"]


def probe(module: str, env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE, module], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.mark.parametrize("module", ENTRY_MODULES)
def test_transport_is_chosen_before_grpc_is_imported(module: str) -> None:
    result = probe(module, clean_env())
    assert result["grpc_loaded"], f"{module} no longer imports grpc: this check proves nothing for it"
    assert result["seen"] == [services.GRPC_EXPERIMENTS]


def test_an_operators_choice_is_kept() -> None:
    for given in ("", "-event_engine_client"):
        result = probe("services.scheduler.server", {**clean_env(), "GRPC_EXPERIMENTS": given})
        assert result["seen"] == [given]
