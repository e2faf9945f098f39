"""Command-line tools apart from the library: benchmarks, run comparison, segmenting images."""
