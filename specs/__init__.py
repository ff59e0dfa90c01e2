"""The example specs (YAML), installed as ``pairgraph.specs`` package data so that ``pairgraph demo``
finds its spec in a ``pip install`` as well as in a checkout. No code lives here."""
