"""The container, wired to a process pool the way the lead is asked to wire it.

``Container`` itself is not edited here: the installed release's ``program`` is
swapped for an adapter whose ``call`` forwards to ``ProcessPool.call`` - the
one-line change the integration makes in ``Container._submit_one.run`` - so
lanes, futures, deadlines and cancellation are exercised end to end.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from tests.onnx_models import linear_model
from vmcontainer import TaskCancelled, TaskTimeout
from vmcontainer.isolation import ProcessPool, ProgramSpec
from vmcontainer.scheduler.scope import CallScope
from vmcontainer.testing import build_test_bundle, test_container


class _InWorker:
    """Stands where ``TaskProgram`` stands: what ``Container`` uses of a program."""

    def __init__(self, pool: ProcessPool, spec: ProgramSpec):
        self.pool, self.spec, self.limits = pool, spec, spec.limits

    def call(self, data: Any, scope: CallScope, upstream: dict[str, Any] | None = None):
        return self.pool.call(self.spec, data, scope, upstream)

    def load_check(self, scope: CallScope) -> None:
        self.pool.load_check(self.spec, scope)


@pytest.fixture(scope="module")
def wired(pool):
    blob, w, b = linear_model()
    sources = {
        "lin": "import vm\ndef main(i):\n    return vm.model('lin').run({'x': i['x']})['y']\n",
        "spin": "def main(i):\n    while True:\n        pass\n",
    }
    with test_container(workers=2) as container:
        for name, source in sources.items():
            bundle = build_test_bundle(source, name=name, models={"lin": blob}, timeout=10.0)
            container.install(bundle)
            verified = container._verifier.verify(bundle)  # what install verified
            task = container._registry.get(name)
            task.program = _InWorker(pool, ProgramSpec.from_verified(verified))
        yield container, w, b


def test_invoke_runs_in_a_worker(wired):
    container, w, b = wired
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(container.invoke("lin", {"x": x}), x @ w + b, rtol=1e-5)


def test_future_cancel_and_timeout(wired):
    container = wired[0]
    with pytest.raises(TaskTimeout):
        container.invoke("spin", timeout=0.2)
    future = container.submit("spin")
    time.sleep(0.2)
    future.cancel()
    start = time.monotonic()
    with pytest.raises(TaskCancelled):
        future.result(5)
    assert time.monotonic() - start < 0.5
