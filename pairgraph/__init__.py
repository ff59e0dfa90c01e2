"""pairgraph: a declarative compiler for guidance (Subramaniam et al., "Training the Untrainable").

    import pairgraph
    pair = pairgraph.compile("specs/rnn_from_transformer.yaml")   # trace, map, generate
    summary = pair.train()                                         # train it

or drop :class:`GuidanceLoss` into your own loop.
"""

__version__ = "0.1.0"

from pairgraph.compiler import CompiledPair, compile  # noqa: E402
from pairgraph.errors import PairgraphError, SpecError  # noqa: E402
from pairgraph.runtime import GuidanceLoss, GuidedPair  # noqa: E402
from pairgraph.spec import PairSpec, load_spec  # noqa: E402

__all__ = ["CompiledPair", "GuidanceLoss", "GuidedPair", "PairSpec", "PairgraphError", "SpecError", "compile",
           "load_spec", "__version__"]
