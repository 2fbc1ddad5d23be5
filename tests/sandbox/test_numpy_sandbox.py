"""numpy inside the sandbox: ordinary code works on the script's own arrays; the
routes to raw memory, files and object arrays are closed."""

from __future__ import annotations

import numpy as np
import pytest

from vmcontainer import SandboxViolation, TaskError
from vmcontainer.testing import run_script

LEGIT = """
import numpy as np
def main(inputs):
    x = np.asarray(inputs["x"], dtype=np.float64)
    x[0] = 10.0
    mask = x > 2
    x[mask] *= 2
    y = x.reshape(2, 2).T @ np.eye(2)
    z = np.where(x > 5, x, 0).astype(np.float32)
    s = f"{x.dtype} {x.sum():.1f} {x.mean():.2f} {repr(x.dtype)}"
    rng = np.random.default_rng(7)
    noise = rng.normal(size=3)
    return {"x": x, "y": y, "z": z, "s": s, "std": float(x.std()), "any": bool(x.any()),
            "clip": x.clip(0, 5), "n": noise.shape[0], "arg": int(np.argmax(x)),
            "isarr": isinstance(x, np.ndarray), "same": type(x) is np.ndarray}
"""


def test_ordinary_numpy_code_runs():
    out = run_script(LEGIT, {"x": np.array([1.0, 2.0, 3.0, 4.0])})
    assert out["x"].tolist() == [10.0 * 2, 2.0, 6.0, 8.0]
    assert out["y"].shape == (2, 2)
    assert out["s"].startswith("float64 36.0 9.00")
    assert out["isarr"] and out["same"]


@pytest.mark.parametrize("body,error", [
    ("    T = type(np.zeros(1))\n    return T((4,), np.uint8)\n", SandboxViolation),
    ("    return np.float64.dump(np.float64(1), 'x.pkl')\n", SandboxViolation),
    ("    return np.zeros(2).dump('x.pkl')\n", SandboxViolation),
    ("    return np.zeros(2).astype(object)\n", SandboxViolation),
    ("    return np.zeros(2).view(np.dtype([('a', 'f8')]))\n", SandboxViolation),
    ("    return np.zeros(4).base\n", SandboxViolation),
    ("    a = np.zeros(4)\n    return a[1:].base\n", SandboxViolation),
    ("    return np.zeros(4).data\n", SandboxViolation),
    ("    f = np.zeros(4).flags\n    return 1\n", SandboxViolation),
    ("    return type(type(np.zeros(1)))\n", SandboxViolation),
    ("    return np.zeros(3, dtype=object)\n", SandboxViolation),
    ("    return np.load\n", TaskError),
    ("    return np.ctypeslib\n", TaskError),
    ("    return np.lib.stride_tricks\n", TaskError),
    ("    return np.zeros(10 ** 10)\n", None),
])
def test_numpy_escape_routes_are_closed(body, error):
    source = "import numpy as np\ndef main(inputs):\n" + body
    from vmcontainer import ResourceLimitExceeded

    with pytest.raises(error or ResourceLimitExceeded):
        run_script(source, None)
