"""xvec: speaker recognition with neural speaker embeddings (x-vectors).

The public Python API is ``xvec.load`` (a checkpoint -> :class:`xvec.Encoder`) and the
``Encoder`` methods ``embed``, ``embed_batch`` and ``score``; plugins import ``xvec.plugin``.
Names are imported lazily so ``xvec --help`` does not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xvec.compat import xvec_version

__version__ = xvec_version()

if TYPE_CHECKING:
    from xvec.api import Encoder, load

__all__ = ["Encoder", "__version__", "load"]


def __getattr__(name: str) -> Any:
    if name in ("Encoder", "load"):
        from xvec import api

        return getattr(api, name)
    raise AttributeError(f"module 'xvec' has no attribute {name!r}")
