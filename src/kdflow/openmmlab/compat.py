"""mmsegmentation without mmcv's compiled ops.

mmcv comes in two builds: ``mmcv`` (with the compiled extension ``mmcv._ext``: CUDA/CPU kernels of
deformable convolution, criss-cross attention, focal loss, ...) and ``mmcv-lite`` (pure Python, the
only one the package index has as a wheel). mmsegmentation 1.2.2 imports ``mmcv.ops`` at import
time (a few heads and losses use it), so with mmcv-lite ``import mmseg.models`` fails on
``mmcv._ext`` even though the heads KDEP's protocols use (PSP, FCN, ASPP, UPerNet) need no
compiled op.

:func:`import_mmseg` therefore installs a stand-in ``mmcv._ext`` module when the real one cannot
be imported: importing it succeeds, and *calling* any of its ops raises a RuntimeError that says
what is missing. Where the real extension exists the stand-in is never installed (the module is
inert). The heads that need compiled ops are refused when a protocol is checked
(:func:`require_compiled_ops`), before any training starts, rather than failing mid-training.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types

EXT = "mmcv._ext"
_STUB_MARK = "__kdflow_stub__"
BUILD_HINT = ("install a full mmcv 2.1.0 build (with ops) instead of mmcv-lite; see README "
              "'Installing' for the from-source build")


class CompiledOpsMissing(RuntimeError):
    """An mmcv op that needs the compiled extension was called on an mmcv-lite install."""


def _stub() -> types.ModuleType:
    module = types.ModuleType(EXT, "kdflow's stand-in for mmcv's compiled extension (kdflow.openmmlab.compat)")
    # mmengine's mmcv_full_available() looks the module up through its spec
    module.__spec__ = importlib.machinery.ModuleSpec(EXT, None)
    setattr(module, _STUB_MARK, True)

    def __getattr__(name: str):
        if name.startswith("__") and name.endswith("__"):  # inspect / torch.library probe dunders
            raise AttributeError(name)

        def missing_op(*args, **kwargs):
            raise CompiledOpsMissing(f"mmcv op {name!r} needs mmcv's compiled extension, which this "
                                     f"install lacks (mmcv-lite); {BUILD_HINT}")

        missing_op.__name__ = name
        return missing_op

    module.__getattr__ = __getattr__
    return module


def compiled_ops_available() -> bool:
    """Whether the real ``mmcv._ext`` can be imported (False once the stand-in is installed)."""
    loaded = sys.modules.get(EXT)
    if loaded is not None:
        return not getattr(loaded, _STUB_MARK, False)
    try:
        importlib.import_module(EXT)
    except ImportError:
        return False
    return True


def install_stub_if_needed() -> bool:
    """Put the stand-in into ``sys.modules`` unless the real extension imports; True if installed."""
    if compiled_ops_available():
        return False
    sys.modules[EXT] = _stub()
    return True


def require_compiled_ops(what: str) -> None:
    """Fail now, naming ``what``, when it needs mmcv's compiled ops and they are absent."""
    if not compiled_ops_available():
        raise CompiledOpsMissing(f"{what} needs mmcv's compiled ops, which this install lacks (mmcv-lite); "
                                 f"{BUILD_HINT}")


def import_mmseg():
    """``mmseg`` with every module registered (mmseg's and kdflow's), importable with mmcv-lite."""
    install_stub_if_needed()
    import mmseg
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    importlib.import_module("kdflow.openmmlab.modules")  # kdflow's registrations
    return mmseg
