"""An example plugin package: registers its own model through ``qbench.models``.

The tests put this folder on ``PYTHONPATH``; ``mypkg-0.1.dist-info`` beside it is what pip
would write for a package whose ``pyproject.toml`` declares::

    [project.entry-points."qbench.models"]
    mypkg = "mypkg"
"""

from functools import partial

from zoo.models import MLP
from zoo.registry import register_model
from zoo.train import Recipe

register_model(
    "mypkg-digits-mlp2x32-bnn-waq", dataset="digits", arch="mlp2x32", quant="bnn-waq",
    recipe=Recipe(epochs=8, lr=1e-2, logit_scale=0.18, clip_latent=True),
    description="a user's 2x32 BNN-WAQ MLP on the 8x8 digits, registered by a plugin",
)(partial(MLP, 64, [32, 32], 10, "bnn-waq"))
