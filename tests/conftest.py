"""Suite-wide settings: one torch thread per test process.

The tests train and score tiny models, where a second thread only adds synchronisation; on a
loaded 2-core machine two threads made a training step 50 times slower.
"""

import torch

torch.set_num_threads(1)
