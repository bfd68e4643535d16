"""The quality checks of the clean stage, one module each, registered by name (see base.py).

Adding a check is one module here, holding one `@quality_check("name", param=default)` predicate,
and its name in `clean.quality_checks`, where the checks run in the order given. Its parameters
can then be set per language (`clean.filters.<lang>.<param>`) and its drops are counted under its name.
"""

import importlib
import pkgutil

from data_prep.quality.base import (
    CHECKS,
    DEFAULT_CHECKS,
    Params,
    QualityCheck,
    QualityFilter,
    Text,
    check_names,
    check_overrides,
    check_quality_checks,
    param_names,
    params_for,
    quality_check,
)

# Every module of this package registers its check when imported: found here, so that a new check
# is one new file. Sorted: the registry's order (and so error messages) does not depend on the disk.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["CHECKS", "DEFAULT_CHECKS", "Params", "QualityCheck", "QualityFilter", "Text", "check_names", "check_overrides",
           "check_quality_checks", "param_names", "params_for", "quality_check"]
