"""obliviate: make trained models forget, measure it against the retrain oracle, keep the record.

>>> import obliviate
>>> [m.name for m in obliviate.list_methods()][:3]
['finetune', 'grad_diff', 'gradient_ascent']
"""
__version__ = "0.1.0"

from obliviate.api import RunResult, bench, evaluate, unlearn  # noqa: E402
from obliviate.audit import audit  # noqa: E402
from obliviate.errors import ObliviateError  # noqa: E402
from obliviate.methods import get_method, list_methods, register  # noqa: E402
from obliviate.tasks import get_task, list_tasks, register_task  # noqa: E402

load_task = get_task

__all__ = ["unlearn", "evaluate", "bench", "audit", "RunResult", "ObliviateError", "get_method", "list_methods",
           "register", "get_task", "load_task", "list_tasks", "register_task", "__version__"]
