"""stablesweep: find where training is stable.

The Python API (stablesweep.api), loaded on first use so that `import stablesweep` stays cheap:

    import stablesweep
    stablesweep.train("configs/demo.yaml", training__lr=1e3)   # Trained(diverged (loss_explosion ...
    stablesweep.sweep(config, space, samples=16), stablesweep.ramp(config, lr_stop=30),
    stablesweep.diagnose(config)

`train`, `sweep` and `diagnose` are also modules of this package (the training loop, the sweep
package, the diagnosis package). Importing them does not rebind these names: `stablesweep.train`
stays the API's function, and the module is what `from stablesweep.train import ...` and
`sys.modules["stablesweep.train"]` give.
"""
import sys as _sys
import types as _types

__version__ = "0.1.0"

_API = ("train", "sweep", "ramp", "diagnose", "Trained", "Swept", "Ramped", "Diagnosed")


def __getattr__(name: str):
    if name in _API:
        from stablesweep import api

        return getattr(api, name)
    raise AttributeError(f"module 'stablesweep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


class _Package(_types.ModuleType):
    """The import system binds a submodule on its package once imported; the API's names stay
    the API's functions."""

    def __setattr__(self, name: str, value) -> None:
        if name in _API and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
