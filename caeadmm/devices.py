"""`--device cpu|cuda`: where the codec's network runs.

The codec (caeadmm.codec) runs the network wherever the model's parameters are, so a
device is a model moved there. "cuda" is refused with a message that says why (no CUDA
build of PyTorch, or no GPU visible) instead of a traceback. On a GPU, TF32 is turned off
for convolutions and matrix products and cuDNN is asked for deterministic algorithms, so
that the float32 network rounds as the format's determinism rule expects
(docs/bitstream.md): a GPU may still round a few symbols or pixels differently from a CPU,
and any decoder reads any stream.
"""

from __future__ import annotations

import torch

DEVICES = ("cpu", "cuda")


class DeviceError(ValueError):
    """The device asked for is not there; the message says why and what to do."""


def cuda_missing() -> str | None:
    """Why --device cuda cannot work here, or None when it can."""
    if torch.version.cuda is None or not torch.backends.cuda.is_built():
        return (f"this PyTorch ({torch.__version__}) is built without CUDA; install a CUDA "
                "build of PyTorch (pytorch.org) or use --device cpu")
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return ("no CUDA GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES); use "
                "--device cpu")
    return None


def resolve(name: str | None) -> torch.device:
    """The torch device of a --device value (None: "cpu"); DeviceError for "cuda" where no GPU
    is usable, ValueError for a name that is neither."""
    name = name or "cpu"
    if name not in DEVICES:
        raise ValueError(f"--device must be cpu or cuda, got {name!r}")
    if name == "cuda":
        why = cuda_missing()
        if why is not None:
            raise DeviceError(f"--device cuda: {why}")
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return torch.device(name)

