"""Pipelines (imported as `mamba_dna.pipelines`): one readable story per job.

Each module reads top to bottom as setup / run / save and is called by one small CLI
function: pretrain, score, embed, classify, demo.
"""
