"""ESP's benchmarks: bounded runs on loopback that write their figures to bench/results/."""
