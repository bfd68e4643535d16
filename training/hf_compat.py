"""transformers beside graine's own top-level `kernels` package.

transformers 5 imports Hugging Face's `kernels` distribution (one of its dependencies) when it finds it
installed, and graine's `kernels` package shadows that name on the path, so the import fails with
"cannot import name 'CUDAProperties'". graine never uses hub kernels: transformers is told they are
absent before any of its models is imported. (The lasting fix is to move graine's packages under one
`graine.` namespace; see the README's known limits.)"""

from __future__ import annotations

import os


def import_transformers():
    """transformers, with hub kernels switched off (idempotent)."""
    os.environ["USE_HUB_KERNELS"] = "NO"  # from_pretrained's default would ask for them
    import transformers
    import transformers.utils as utils
    import transformers.utils.import_utils as import_utils

    import_utils.is_kernels_available = utils.is_kernels_available = lambda *args, **kwargs: False
    return transformers
