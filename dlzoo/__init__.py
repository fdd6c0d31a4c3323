"""dlzoo: config-driven PyTorch runs of the classic deep-learning lessons.

In Python or a notebook, the CLI's grammar (overrides as typed on the command line):

    import dlzoo
    result = dlzoo.train("model=mlp_xavier", "trainer.epochs=3", data_root="data/mnist")
    result.metrics["test_acc"], result.history, result.folder, result.model()

dlzoo.ladder(...) runs the lectures' accuracy ladder; dlzoo.compare(folders...) says whether groups of runs differ
beyond seed noise; dlzoo.load(folder) reads back any run folder.
"""

import sys
import types
from typing import Any

__version__ = "0.1.0"

# TensorBoard loads TensorFlow whenever it is installed, and TensorFlow's native libraries then crash torch's
# first import of Triton (a segmentation fault when the optimizer is built; tensorflow-cpu 2.21 with torch 2.14).
# dlzoo writes its event files without TensorFlow; this module is TensorBoard's own switch for its TF-free stub.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))

# The Python API (dlzoo/api.py), loaded at its first use: `import dlzoo` stays free of torch and Hydra.
__all__ = ["DlzooError", "Interrupted", "LadderResult", "Result", "compare", "ladder", "load", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from dlzoo import api

        return getattr(api, name)
    raise AttributeError(f"module 'dlzoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
