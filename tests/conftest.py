import os

import pytest
import torch

# Deterministic and fair on the 2-core CI machine.
torch.manual_seed(0)
torch.set_num_threads(int(os.environ.get("REROUTE_TEST_THREADS", "1")))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The bundled demo model when installed, else a random one of the same architecture (the
    demo, show and analyze paths are the same for both)."""
    from reroute.demo import modeling

    if (modeling.MODEL_DIR / "config.json").exists():
        return modeling.MODEL_DIR
    path = tmp_path_factory.mktemp("demo_model")
    model, processor = modeling.build_model(seed=0)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
