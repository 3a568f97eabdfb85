"""Measurement, the one place it lives: generator speed, FLOPs and memory (``speed``), machine ceilings
(``ceilings``), timing spreads and process timing (``timing``) and machine facts (``machine``). The optimize and
evaluate stages, ``ganforge bench`` and the scripts in benchmarks/ all use it. Import the submodule you need."""
