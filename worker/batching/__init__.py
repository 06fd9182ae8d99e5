"""Batched decoding: synthesis sessions, the batched GPT decoder, CUDA graphs."""
