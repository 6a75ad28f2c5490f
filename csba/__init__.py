"""CSBA Explorer: gradient conflict and class-specific branch attention under class imbalance.

Public entry points: :func:`create_model`, :func:`list_models`, :mod:`csba.data`,
:mod:`csba.train`, :mod:`csba.evaluate`, :mod:`csba.store` and :mod:`csba.diagnostics`.
"""

from .models import count_parameters, create_model, list_models, model_info

__version__ = "0.1.0"
__all__ = ["__version__", "count_parameters", "create_model", "list_models", "model_info"]
