"""Performance benchmarks (not tests): each writes a CSV under results/bench/ and one line to summary.md."""
