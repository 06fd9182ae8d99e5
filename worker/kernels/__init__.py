"""The decode step's Triton kernels and their loader."""
