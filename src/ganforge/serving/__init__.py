"""Serving a package: batch generation to files (``generate``, shardable under torchrun) and the HTTP
service (``server``). Import the submodule you need."""
