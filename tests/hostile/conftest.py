"""The hostile-input suite (issue 11 item 2) runs against the same in-process stack as
tests/api (real gateway app on uvicorn, real scheduler, real storage): see tests/api/conftest.py.

Each module is one family of bad requests, table-driven; every case asserts the exact status,
reason and the key words of the message, then that the services still answer (`hostile.expect`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from tests.api.conftest import api  # noqa: F401  (the package-scoped stack, one for this folder)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if pytest_asyncio.is_async_test(item) and here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.asyncio(loop_scope="package"), append=False)
