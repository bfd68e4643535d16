"""Build DeepSpeed's JIT ops once (CPU Adam, shared-memory comm) so that tests do not pay for it."""

import os
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")

t0 = time.time()
import torch  # noqa: E402
from deepspeed.ops.adam import DeepSpeedCPUAdam  # noqa: E402

DeepSpeedCPUAdam([torch.nn.Parameter(torch.zeros(4))])
try:
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    ShareMemCommBuilder().load()
except Exception as exc:  # the comm op is an optimisation; its absence only slows init_distributed
    print(f"shared-memory comm op not built: {exc}")
print(f"DeepSpeed CPU ops ready in {time.time() - t0:.0f} s")
