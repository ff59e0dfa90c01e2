"""pairgraph: a declarative compiler for guidance (Subramaniam et al., "Training the Untrainable").

    import pairgraph
    pair = pairgraph.compile("specs/rnn_from_transformer.yaml")   # trace, map, generate
    summary = pair.train()                                         # train it: pairgraph.train(pair)

or drop :class:`GuidanceLoss` into your own loop.
"""

from pairgraph.compiler.guidance_loss import GuidanceLoss
from pairgraph.compiler.pipeline import CompiledPair, build_pair
from pairgraph.config import PairSpec, load_spec
from pairgraph.core.loss import GuidedPair
from pairgraph.errors import PairgraphError, SpecError
from pairgraph.training import compile, train
from pairgraph.version import __version__

__all__ = [
    "CompiledPair",
    "GuidanceLoss",
    "GuidedPair",
    "PairSpec",
    "PairgraphError",
    "SpecError",
    "__version__",
    "build_pair",
    "compile",
    "load_spec",
    "train",
]
