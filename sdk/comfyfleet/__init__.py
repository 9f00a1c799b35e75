"""comfyfleet: the Python SDK (and `python -m comfyfleet`, the CLI) for the comfyfleet API.

    >>> from comfyfleet import Client
    >>> with Client("http://127.0.0.1:8080", token="cf_...") as client:
    ...     wf = client.workflows.create("invert.json", name="demo", params={"prefix": "cat"})
    ...     for event in client.workflows.watch(wf.id):
    ...         print(event.kind, event)
    ...     for output in client.workflows.outputs(wf.id):
    ...         client.workflows.download(output, "out/")

`AsyncClient` has the same resources with `async` methods. Errors are in
`comfyfleet.errors`, the resources' shapes in `comfyfleet.models`.

This package shares the `comfyfleet` import name with the generated gRPC code
(`comfyfleet.scheduler.v1`, ...): `extend_path` joins both folders, and the names below
are imported lazily so that services importing the generated code never load httpx or pydantic.
"""

from typing import Any

__path__ = __import__("pkgutil").extend_path(__path__, __name__)

_EXPORTS = {
    "Client": "comfyfleet.client",
    "AsyncClient": "comfyfleet.async_client",
    "Settings": "comfyfleet.settings",
}
_MODULE_EXPORTS = {"errors", "models"}

__all__ = ["AsyncClient", "Client", "Settings", "errors", "models"]


def __getattr__(name: str) -> Any:
    import importlib

    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _MODULE_EXPORTS:
        return importlib.import_module(f"comfyfleet.{name}")
    raise AttributeError(f"module 'comfyfleet' has no attribute {name!r}")
