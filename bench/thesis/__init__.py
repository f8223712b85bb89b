"""The thesis experiment (issue 11): ESP against a single-node monolith over the Table 5.1 mix."""
