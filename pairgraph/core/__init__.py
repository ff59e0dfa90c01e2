"""L2 — the guidance core: similarity measures, the tracing policy and tracer, tapped networks,
the guidance loss, the guide cache, distributed helpers, weights on disk, optimizers."""
