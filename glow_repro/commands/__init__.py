"""Click commands, one module per topic; ``ALL_COMMANDS`` is what ``glow-repro`` registers."""

ALL_COMMANDS: list = []
