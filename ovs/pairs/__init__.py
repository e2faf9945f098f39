"""OVSeg-style mask-noun pairs: pairing caption nouns with pseudo-masks, and their precision."""
