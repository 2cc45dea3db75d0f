"""rave_core: our implementation of the RAVE model family (RAVE v1/v2/v3, BRAVE),
compatible with acids-rave 2.3.1 checkpoints and configs, with exact streaming.

>>> import rave_core
>>> model = rave_core.load_run("runs/my_run")          # or acids-rave's run directory
>>> y = model.decode(model.encode(x)[:, :model.latent_size])
"""
__version__ = "0.1.0"

from .config import ConfigError, available_configs, build_model  # noqa: E402
from .run import RunError, load_run, open_run  # noqa: E402

__all__ = ["ConfigError", "RunError", "available_configs", "build_model", "load_run", "open_run"]
