"""The vocabulary every layer shares: errors, recipe-schema parsing, atomic folders, progress, child processes. Imports nothing else of edgepress."""
