"""Test-session settings: the smoke profile, and outputs in a scratch folder rather than the repository.

nbval starts each notebook's kernel with this environment, so `pytest --nbval-lax notebooks` runs the
notebooks under the smoke profile without touching the committed figures/ and results/.
"""

import os
import tempfile

import torch

os.environ["MTML_PROFILE"] = "smoke"
os.environ["TQDM_DISABLE"] = "1"
os.environ["MTML_OUT"] = tempfile.mkdtemp(prefix="mtml-test-out-")

# The library's test models are tiny: one thread avoids oversubscription on small machines (2 cores),
# where two threads per process made some tests a hundred times slower.
torch.set_num_threads(1)
