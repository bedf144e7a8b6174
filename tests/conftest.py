"""Shared test configuration.

The suite is dominated by small dense operations, for which one thread is fastest and immune to
the thread oversubscription of a shared 2-core machine (where 2-thread BLAS on 50x50 matrices can
be 100x slower under load). Results do not depend on the thread count.
"""

import torch

torch.set_num_threads(1)
