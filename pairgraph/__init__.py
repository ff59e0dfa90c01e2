"""pairgraph: a declarative compiler for guidance (Subramaniam et al., "Training the Untrainable").

    import pairgraph
    pair = pairgraph.compile("specs/rnn_from_transformer.yaml")   # trace, map, generate
    summary = pair.train()                                         # train it

or drop :class:`GuidanceLoss` into your own loop.
"""

__version__ = "0.1.0"

from pairgraph.compiler import CompiledPair, compile
from pairgraph.errors import PairgraphError, SpecError
from pairgraph.runtime import GuidanceLoss, GuidedPair
from pairgraph.spec import PairSpec, load_spec

__all__ = [
           "CompiledPair",
           "GuidanceLoss",
           "GuidedPair",
           "PairSpec",
           "PairgraphError",
           "SpecError",
           "__version__",
           "compile",
           "load_spec",
]
