"""One training run: its directory, the engine, the loop and its hooks, the checkpoint,
cadence, samples, stability and forensics, and the speed benchmark (docs/architecture.md).

Empty of imports, so reading a run directory (``glow_repro.run.rundir``) never loads torch."""
