"""kube-xdp benchmarks (`make bench`, `python -m bench.run`): they measure and report,
they never assert timings. See bench/README.md."""
