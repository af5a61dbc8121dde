"""Training jobs (one file a kind: sft; the alignment kinds land beside it) and what they share."""
