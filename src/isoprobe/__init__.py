"""isoprobe: [CLS] anisotropy, [CLS] normalization during fine-tuning, and probing of BERT-family encoders.

`isoprobe.register_treatment(name, options_model, build)` adds a [CLS] treatment (see
isoprobe.core.treatments); `isoprobe.TreatmentOptions` is the base of its options model. Both are
imported on first use, so `import isoprobe` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Treatment", "TreatmentOptions", "__version__", "register_treatment"]
_TREATMENTS = ("Treatment", "TreatmentOptions", "register_treatment")


def __getattr__(name: str) -> Any:
    if name in _TREATMENTS:
        from isoprobe.core import treatments

        return getattr(treatments, name)
    raise AttributeError(f"module 'isoprobe' has no attribute {name!r}")
