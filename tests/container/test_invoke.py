"""The device container: run by name, deadlines, isolation, errors, hot swap."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from vmcontainer import (
    InvalidInputs,
    SandboxViolation,
    TaskError,
    TaskNotFound,
    TaskTimeout,
    VmError,
)
from vmcontainer.testing import build_test_bundle, run_script

RUNAWAY = "def main(inputs):\n    while True:\n        pass\n"


def test_invoke_by_name_and_submit_future(container, deploy):
    name = deploy("def main(inputs):\n    return {'double': inputs * 2}\n")
    assert container.invoke(name, 21) == {"double": 42}
    fut = container.submit(name, 2)
    seen = []
    fut.add_done_callback(lambda f: seen.append(f.result()))
    assert fut.result(timeout=5) == {"double": 4}
    assert seen == [{"double": 4}]
    assert name in {t.name for t in container.tasks()}


def test_unknown_task(container):
    with pytest.raises(TaskNotFound):
        container.invoke("no-such-task", {})


def test_runaway_loop_times_out_close_to_deadline_and_worker_recovers(container, deploy):
    slow = deploy(RUNAWAY)
    ok = deploy("def main(inputs):\n    return 'alive'\n")
    for _ in range(3):
        start = time.monotonic()
        with pytest.raises(TaskTimeout):
            container.invoke(slow, None, timeout=0.2)
        overshoot = time.monotonic() - start - 0.2
        assert overshoot < 0.05, overshoot
        assert container.invoke(ok) == "alive"


def test_run_script_timeout_then_next_call_works():
    start = time.monotonic()
    with pytest.raises(TaskTimeout):
        run_script(RUNAWAY, None, timeout=0.2)
    assert time.monotonic() - start < 0.2 + 0.5  # includes building the bundle
    assert run_script("def main(i):\n    return i + 1\n", 1) == 2


@pytest.mark.parametrize("body", [
    "    try:\n        while True:\n            pass\n    except Exception:\n        return 'caught'\n",
    "    try:\n        while True:\n            pass\n    except:\n        return 'caught'\n",
    "    try:\n        while True:\n            pass\n    finally:\n        return 'swallowed'\n",
    "    def fib(n):\n        return n if n < 2 else fib(n - 1) + fib(n - 2)\n    return fib(60)\n",
    "    return [x for x in range(10 ** 12)]\n",
    "    g = (x for x in range(10 ** 12))\n    return sum(1 for _ in g)\n",
])
def test_timeouts_cannot_be_swallowed(container, deploy, body):
    name = deploy("def main(inputs):\n" + body)
    with pytest.raises(TaskTimeout):
        container.invoke(name, None, timeout=0.15)


def test_queue_time_counts_against_the_deadline(deploy):
    from vmcontainer.testing import test_container

    with test_container(workers=1) as c:
        c.install(build_test_bundle(RUNAWAY, name="busy"))
        c.install(build_test_bundle("def main(i):\n    return 1\n", name="quick"))
        busy = c.submit("busy", None, timeout=0.3)
        queued = c.submit("quick", None, timeout=0.1)  # waits behind busy for 0.3 s
        with pytest.raises(TaskTimeout):
            queued.result()
        with pytest.raises(TaskTimeout):
            busy.result()


def test_calls_are_isolated(container, deploy):
    name = deploy("""
STATE = {"n": 0}
class K:
    hits = 0
def main(inputs):
    STATE["n"] += 1
    K.hits += 1
    inputs["mutated"] = True
    return STATE["n"], K.hits
""")
    host_inputs = {"a": 1}
    results = [container.invoke(name, host_inputs) for _ in range(5)]
    assert results == [(1, 1)] * 5
    assert host_inputs == {"a": 1}  # the script got a copy


def test_concurrent_calls_see_only_their_own_state(container, deploy):
    name = deploy("""
def main(inputs):
    acc = []
    for i in range(2000):
        acc.append(inputs)
    return sum(acc) // 2000
""")
    futures = [container.submit(name, i) for i in range(50)]
    assert [f.result() for f in futures] == list(range(50))


def test_host_arrays_are_copied_in_and_results_copied_out(container, deploy):
    name = deploy("""
def main(inputs):
    x = inputs["x"]
    x[0] = 99.0
    x *= 2
    return {"x": x, "view": x[1:]}
""")
    host = np.arange(4, dtype=np.float32)
    out = container.invoke(name, {"x": host})
    assert host.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert out["x"].tolist() == [198.0, 2.0, 4.0, 6.0]
    assert out["view"].base is None  # a result never exposes a parent buffer


def test_script_error_carries_script_traceback_without_host_paths(container, deploy):
    name = deploy("""
def helper(d):
    return d["missing"]

def main(inputs):
    return helper(inputs)
""", )
    with pytest.raises(TaskError) as info:
        container.invoke(name, {})
    err = info.value
    assert err.exc_type == "KeyError"
    assert 'line 3, in helper' in err.script_traceback
    assert 'line 6, in main' in err.script_traceback
    for text in (str(err), err.script_traceback):
        assert "/work" not in text and "site-packages" not in text and "vmcontainer" not in text


@pytest.mark.parametrize("source,error", [
    ("def main(i):\n    raise SystemExit(3)\n", TaskError),
    ("def main(i):\n    raise KeyboardInterrupt\n", TaskError),
    ("def main(i):\n    class E(BaseException):\n        pass\n    raise E()\n", TaskError),
    ("def main(i):\n    return getattr(i, '__class__')\n", SandboxViolation),
    ("import math\ndef main(i):\n    math.pi = 3\n", SandboxViolation),
    ("def main(i):\n    return (x for x in [1])\n", TaskError),
    ("class C:\n    pass\ndef main(i):\n    return [C()]\n", TaskError),
    ("def main(i):\n    return {1: {2: {3: None}}}, 'x' * 10\n", None),
])
def test_nothing_gets_past_the_boundary(container, deploy, source, error):
    name = deploy(source)
    if error is None:
        container.invoke(name, None)
        return
    with pytest.raises(error):
        container.invoke(name, None)
    assert container.invoke(deploy("def main(i):\n    return 'next'\n")) == "next"


def test_result_validation_refuses_deep_and_huge(container, deploy):
    deep = deploy("def main(i):\n    x = []\n    for _ in range(200):\n        x = [x]\n    return x\n")
    with pytest.raises(TaskError, match="nested deeper"):
        container.invoke(deep)
    big = deploy("def main(i):\n    return 10 ** 30000\n")
    with pytest.raises(TaskError, match="integer too large"):
        container.invoke(big)


def test_invalid_inputs_fail_fast(container, deploy):
    name = deploy("def main(i):\n    return 1\n")

    class Custom:
        pass

    with pytest.raises(InvalidInputs):
        container.submit(name, {"x": Custom()})
    with pytest.raises(InvalidInputs):
        container.submit(name, np.array([object()], dtype=object))


def test_print_is_captured_and_capped(container, deploy, caplog):
    name = deploy("def main(i):\n    for k in range(100000):\n        print('spam', k)\n    return 'done'\n")
    with caplog.at_level("INFO", logger="vmcontainer"):
        assert container.invoke(name, timeout=10) == "done"
    printed = "\n".join(r.getMessage() for r in caplog.records)
    assert "spam 0" in printed
    assert len(printed) < 70 * 1024
    assert "truncated" in printed


def test_hot_swap_running_calls_finish_on_old_release(container):
    src = "import vm\ndef main(i):\n    n = 0\n    while n < {loops}:\n        n += 1\n    return vm.release\n"
    container.install(build_test_bundle(src.format(loops=300000), name="swap", release=1))
    running = [container.submit("swap", None, timeout=10) for _ in range(2)]
    time.sleep(0.01)
    container.install(build_test_bundle(src.format(loops=1), name="swap", release=2))
    assert [f.result() for f in running] == [1, 1]
    assert container.invoke("swap") == 2
    info = {t.name: t for t in container.tasks()}["swap"]
    assert info.release == 2


def test_concurrent_installs_and_invokes_never_see_half_installed(container):
    src = "import vm\ndef main(i):\n    return vm.release\n"
    container.install(build_test_bundle(src, name="flip", release=1))
    bundles = [build_test_bundle(src, name="flip", release=r) for r in range(2, 12)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def caller():
        last = 0
        while not stop.is_set():
            try:
                rel = container.invoke("flip")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return
            if rel < last:
                errors.append(AssertionError(f"release went back {last} -> {rel}"))
            last = rel

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for t in threads:
        t.start()
    for b in bundles:
        container.install(b)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert container.invoke("flip") == 11


def test_uninstall_keeps_rollback_protection(container):
    from vmcontainer import BundleRollback

    src = "def main(i):\n    return 1\n"
    container.install(build_test_bundle(src, name="gone", release=5))
    container.uninstall("gone")
    with pytest.raises(TaskNotFound):
        container.invoke("gone")
    with pytest.raises(BundleRollback):
        container.install(build_test_bundle(src, name="gone", release=4))


def test_every_error_is_a_vmerror():
    import vmcontainer

    for name in vmcontainer.__all__:
        obj = getattr(vmcontainer, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and name != "Diagnostic":
            assert issubclass(obj, VmError), name


@pytest.mark.parametrize("body,error", [
    ("    try:\n        return getattr(i, '__class__')\n    finally:\n        return 'swallowed'\n",
     SandboxViolation),
    ("    try:\n        x = 10 ** (10 ** 8)\n    finally:\n        return 'swallowed'\n", None),
])
def test_swallowed_violations_still_fail_the_call(container, deploy, body, error):
    from vmcontainer import ResourceLimitExceeded

    name = deploy("def main(i):\n" + body)
    with pytest.raises(error or ResourceLimitExceeded):
        container.invoke(name, 1)


@pytest.mark.parametrize("expr", [
    "10 ** 10 ** 8", "2 ** i", "[0] * (10 ** 9)", "'ab' * i", "1 << (1 << 40)",
    "pow(7, 10 ** 9)", "'x'.ljust(10 ** 10)", "'7'.zfill(i)",
    "_aug_item(i)", "_aug_attr(i)",
])
def test_size_bombs_are_refused_before_allocating(container, deploy, expr):
    from vmcontainer import ResourceLimitExceeded

    helpers = ("def aug_item(i):\n    d = {0: 'ab'}\n    d[0] *= i\n    return d[0]\n"
               "class Box:\n    def __init__(self):\n        self.v = 3\n"
               "def aug_attr(i):\n    b = Box()\n    b.v **= i\n    return b.v\n")
    name = deploy(helpers + f"def main(i):\n    return len(str({expr.replace('_aug', 'aug')}))\n")
    start = time.monotonic()
    with pytest.raises(ResourceLimitExceeded):
        container.invoke(name, 10 ** 9, timeout=5)
    assert time.monotonic() - start < 1.0


def test_cpu_budget_and_ordinary_arithmetic():
    from vmcontainer import ResourceLimitExceeded
    from vmcontainer.sandbox.limits import ResourceLimits

    with limited_container(ResourceLimits(cpu_seconds=0.1)) as c:
        c.install(build_test_bundle("def main(i):\n    while True:\n        pass\n", name="burn"))
        with pytest.raises(ResourceLimitExceeded, match="CPU budget"):
            c.invoke("burn", None, timeout=5)
        c.install(build_test_bundle(
            "def main(i):\n    n = 3\n    n *= i\n    return [n * i, 2 ** 10, i ** 3, 'ab' * 3, [1] * n]\n",
            name="math"))
        assert c.invoke("math", 2) == [12, 1024, 8, "ababab", [1] * 6]


def test_model_runs_per_call_are_capped():
    from tests.onnx_models import linear_model
    from vmcontainer import ResourceLimitExceeded
    from vmcontainer.sandbox.limits import ResourceLimits

    blob, _, _ = linear_model()
    with limited_container(ResourceLimits(max_model_runs=3)) as c:
        c.install(build_test_bundle(
            "import vm\nimport numpy as np\ndef main(i):\n    m = vm.model('lin')\n"
            "    for _ in range(i):\n        m.run({'x': np.zeros((1, 4), dtype=np.float32)})\n    return i\n",
            name="runs", models={"lin": blob}))
        assert c.invoke("runs", 3) == 3
        with pytest.raises(ResourceLimitExceeded, match="model runs"):
            c.invoke("runs", 4)


def limited_container(limits):
    from vmcontainer.testing import test_container

    return test_container(workers=1, limits=limits)





def test_comprehensions_keep_every_element_across_checkpoint_audits():
    """The comprehension checkpoint's slow path (CPU audit every 10 ms, parking) must
    never act as a false filter: long comprehensions keep all their elements."""
    src = ("def main(n):\n"
           "    xs = [i for i in range(n)]\n"
           "    d = {i: i for i in range(n)}\n"
           "    s = {i for i in range(n)}\n"
           "    g = sum(1 for i in range(n))\n"
           "    return [len(xs), len(d), len(s), g]\n")
    n = 1_000_000
    assert run_script(src, n, timeout=30) == [n, n, n, n]
