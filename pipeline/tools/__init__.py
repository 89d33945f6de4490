"""Tools around the service, never imported by it: the CLI, the local stack launcher, producers of
readings, the demo and the benchmarks."""
