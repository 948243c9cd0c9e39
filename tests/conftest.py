import os

# Tiny models on 2 shared cores: one thread each (2 threads made tiny generate 5-20x slower here).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


# The served session (one real `bentoml serve` per test run) and the servers beside it, shared by every
# folder that needs them (tests/served, tests/fuzz).
from tests.served_session import media_dir, media_server, s3_server, served, wav  # noqa: E402,F401
