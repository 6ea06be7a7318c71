"""Measuring a recipe's speed and memory (``t2i bench``), one job per module.

* :mod:`t2i.bench.cpu_meter` — how busy the machine was, peak RSS, the matmul peak;
* :mod:`t2i.bench.flops` — FLOPs of one call;
* :mod:`t2i.bench.synthetic` — vocabulary, captions, batches and random frozen encoders at a recipe's real sizes;
* :mod:`t2i.bench.timing` — warm-up, timed repeats, interleaved rounds;
* :mod:`t2i.bench.cases` — t2i's train / sample / data cases, planned, run in a fresh process, compared;
* :mod:`t2i.bench.reference` — the original networks through the bench-reference harness.

Speed is never asserted in tests; the numbers and how they were taken are in benchmarks/RESULTS.md.
"""
