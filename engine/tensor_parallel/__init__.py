"""Tensor parallelism: CodeGen split over N processes (GPUs), Megatron style.

`plan` (which block of each tensor a rank holds), `shards` (reading only that block),
`vocab` (the embedding and lm_head split by vocabulary: lookups reduced, logits gathered),
`group` (starting the ranks, collectives, liveness), `remote` (rank 0's model proxy that
forwards each interface call to the followers, and the followers' loop).
"""
