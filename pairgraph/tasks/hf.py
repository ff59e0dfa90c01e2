"""Hugging Face ``datasets`` access for the ``hf:<name>[:<config>]`` sources of text and image tasks.

``datasets`` is imported only inside these functions (it is heavy). Callers use the module
(``hf.load(source)``), so tests replace :func:`load` in one place for every task family.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from pairgraph.errors import PairgraphError, first_line
from pairgraph.paths import cache_dir


@contextlib.contextmanager
def quiet(offline: bool) -> Iterator[Any]:
    """Import ``datasets`` with progress bars off and, for local files, hub access disabled."""
    import datasets
    import datasets.config as hf_config

    old_offline = hf_config.HF_HUB_OFFLINE
    bars_were_off = datasets.are_progress_bars_disabled()
    if offline:
        hf_config.HF_HUB_OFFLINE = True
    datasets.disable_progress_bars()
    try:
        yield datasets
    finally:
        hf_config.HF_HUB_OFFLINE = old_offline
        if not bars_were_off:
            datasets.enable_progress_bars()


def parse_source(source: str) -> tuple[str, str | None]:
    """``'hf:<name>[:<config>]'`` → (name, config or None)."""
    rest = source[3:]
    name, _, config = rest.partition(":")
    if not name:
        raise PairgraphError(f"bad Hugging Face source {source!r}", "write it as 'hf:<name>' or 'hf:<name>:<config>'")
    return name, (config or None)


def load(source: str) -> Any:
    """The ``DatasetDict`` of ``source`` (downloaded into ``cache_dir()/hf``); failures are one line."""
    name, config = parse_source(source)
    with quiet(offline=False) as datasets:
        try:
            return datasets.load_dataset(name, config, cache_dir=str(cache_dir() / "hf"))
        except (OSError, ValueError, RuntimeError, ImportError) as e:  # network, unknown name, bad config
            raise PairgraphError(
                f"could not load Hugging Face dataset {source!r}: {first_line(e) or type(e).__name__}",
                "check the name/config and your internet connection (Hugging Face datasets are downloaded)",
            ) from None
