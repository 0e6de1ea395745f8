"""Benchmarks of speed, memory and training throughput on this machine; imports every layer below emotion.app."""
