"""Studies: YAML ablation specs, the runner and its launchers, and the long tables of results."""
