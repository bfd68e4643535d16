"""The bottom layer: errors, the config schema machinery, stage and step interfaces, lineage records,
file writing and hashing. Imports nothing else of graine."""
