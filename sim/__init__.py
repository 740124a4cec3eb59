"""Deterministic simulation of the lease, the mailbox and the SPM (docs/simulation.md).

Never imported by the product: ``python -m sim --seed S`` runs one world.
"""
