import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(2)
warnings.filterwarnings("ignore", message=".*no HF processor.*")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
