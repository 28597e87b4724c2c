"""The command line: `edgepress run|check|bench|gate|metrics|target|stages`, one module per command family."""
