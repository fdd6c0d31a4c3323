"""dlzoo: config-driven PyTorch runs of the classic deep-learning lessons."""

import sys
import types

__version__ = "0.1.0"

# TensorBoard loads TensorFlow whenever it is installed, and TensorFlow's native libraries then crash torch's
# first import of Triton (a segmentation fault when the optimizer is built; tensorflow-cpu 2.21 with torch 2.14).
# dlzoo writes its event files without TensorFlow; this module is TensorBoard's own switch for its TF-free stub.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
