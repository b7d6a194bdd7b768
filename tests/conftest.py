import os
import sys

import torch

# Deterministic and fair on the 2-core CI machine.
torch.manual_seed(0)
torch.set_num_threads(int(os.environ.get("REROUTE_TEST_THREADS", "1")))
sys.path.insert(0, os.path.dirname(__file__))
