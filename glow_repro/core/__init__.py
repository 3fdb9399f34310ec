"""The model and what it learns from: configs and registries, datasets, the flow layers, the
multi-scale Glow, its objectives, the data and the evaluation sums (docs/architecture.md).

Empty of imports: a module of this package loads only what it imports itself."""
